// Server configuration: one table of flags (each also readable from SPIKESERVE_<UPPER_SNAKE>),
// parsed and validated into a frozen ServerConfig. Bad input throws ConfigError naming the flag;
// the CLI prints it and exits 2. Flags beat environment variables, which beat defaults.
import { basename, resolve } from 'node:path';
import { packageRoot } from '../engine/package-root.ts';

/** The repository root, so the default model resolves from any cwd (and from the compiled copy). */
export const PACKAGE_ROOT = packageRoot(import.meta.url);
export const DEFAULT_MODEL_DIR = resolve(PACKAGE_ROOT, 'models', 'spikingbrain-tiny');

export type Device = 'cpu' | 'webgpu' | 'cuda';
/** Storage of weight matrices (the engine's WeightDtype). */
export type Weights = 'float32' | 'float16' | 'int8' | 'int4';
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
export type MetricsCompat = 'none' | 'vllm';

export interface ServerConfig {
  readonly modelDir: string;
  readonly servedModelName: string;
  readonly host: string;
  readonly port: number;
  /** Accepted Bearer keys; empty = no authentication. */
  readonly apiKeys: readonly string[];
  /** Origins allowed to call from a browser (CORS); empty = same-origin only, ['*'] = any. */
  readonly allowedOrigins: readonly string[];
  readonly device: Device;
  /** Unset: auto (int8 on cpu, float32 for W8ASpike checkpoints; float16 on GPUs). */
  readonly weights?: Weights;
  readonly maxNumSeqs?: number;
  readonly kvCacheBytes?: number;
  readonly pageTokens?: number;
  readonly maxBatchedTokens?: number;
  readonly prefillChunkTokens?: number;
  readonly maxAttentionScoreBytes?: number;
  readonly prefixCacheBytes?: number;
  readonly prefixCacheDir?: string;
  readonly prefixCacheDiskBytes?: number;
  readonly prefixShareMinTokens?: number;
  readonly prefixCacheReadTimeoutSeconds?: number;
  /** Also export the vLLM names of the gauges an endpoint picker reads (`vllm:num_requests_waiting`, …). */
  readonly metricsCompat: MetricsCompat;
  readonly maxModelLen?: number;
  readonly maxQueue?: number;
  readonly bodyLimitBytes: number;
  /** Request limits (each a 400 or 429 naming what was over): see FLAGS and README "Flags". */
  readonly maxWaitingTokens: number;
  readonly maxMessages: number;
  readonly maxTools: number;
  readonly maxToolsBytes: number;
  readonly maxStopStrings: number;
  readonly maxStopStringChars: number;
  readonly maxDetokenizeTokens: number;
  readonly maxEchoTokens: number;
  readonly maxPromptLogprobsTokens: number;
  readonly maxStreamBufferBytes: number;
  /** Special tokens typed in user and tool message content become control tokens (default: plain text). */
  readonly allowSpecialTokensInContent: boolean;
  /** Recent chat replies whose token ids are remembered (conversation reuse); 0 = off. */
  readonly conversationCacheEntries: number;
  /** Bound of those replies' token ids, all together; 0 = off. */
  readonly conversationCacheTokens: number;
  readonly drainTimeoutSeconds: number;
  /** Restarts of a lost inference worker allowed within engineRestartWindowSeconds; one more failure gives up. */
  readonly engineMaxRestarts: number;
  readonly engineRestartWindowSeconds: number;
  /** A step running longer means a hung worker (restarted); 0 = no watchdog. */
  readonly stepTimeoutSeconds: number;
  readonly cacheDir?: string;
  readonly threads?: number;
  /** Unset: auto (1 on cpu for models of ≤ 64 M parameters, else one session); 0: one session. */
  readonly decodeThreads?: number;
  readonly grammarCacheEntries?: number;
  readonly logLevel: LogLevel;
  /** Interval of SSE `: keep-alive` comments while nothing else is sent (≤ 10). */
  readonly keepaliveSeconds: number;
}

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

type Kind = 'string' | 'int' | 'number' | 'enum' | 'bool';

interface FlagSpec {
  readonly flag: string; // kebab-case, without "--"
  readonly kind: Kind;
  readonly help: string;
  readonly choices?: readonly string[];
  readonly min?: number;
  readonly max?: number;
  readonly defaultText?: string;
}

/** Every flag `serve` accepts, in --help order. */
export const FLAGS: readonly FlagSpec[] = [
  { flag: 'model', kind: 'string', help: 'checkpoint directory (Hugging Face layout)', defaultText: 'models/spikingbrain-tiny in the package' },
  { flag: 'served-model-name', kind: 'string', help: 'model id clients send and /v1/models lists', defaultText: 'the model directory name' },
  { flag: 'host', kind: 'string', help: 'address to listen on', defaultText: '127.0.0.1' },
  { flag: 'port', kind: 'int', min: 0, max: 65535, help: 'TCP port (0 = any free port)', defaultText: '8000' },
  { flag: 'api-key', kind: 'string', help: 'required Bearer key(s), comma-separated; unset = no auth' },
  { flag: 'allowed-origins', kind: 'string', help: 'origins browsers may call from (CORS), comma-separated, or *; unset = same-origin only' },
  { flag: 'device', kind: 'enum', choices: ['cpu', 'webgpu', 'cuda'], help: 'onnxruntime execution provider', defaultText: 'cpu' },
  { flag: 'weights', kind: 'enum', choices: ['float32', 'float16', 'int8', 'int4'], help: 'storage of weight matrices; int8/int4: linear layers on 8/4-bit blocks (about 2× faster decode on CPUs; int4 loses quality)', defaultText: 'int8 on cpu (float32 for W8ASpike checkpoints), float16 on GPUs' },
  { flag: 'max-num-seqs', kind: 'int', min: 1, help: 'sequences decoded together in one step' },
  { flag: 'kv-cache-bytes', kind: 'int', min: 1, help: 'bytes of the paged KV pool' },
  { flag: 'page-tokens', kind: 'int', min: 1, help: 'tokens per KV page' },
  { flag: 'max-batched-tokens', kind: 'int', min: 1, help: 'token budget of one scheduler step' },
  { flag: 'prefill-chunk-tokens', kind: 'int', min: 1, help: 'longest prefill chunk of one sequence per step' },
  { flag: 'max-attention-score-bytes', kind: 'int', min: 1024, help: 'models with full or MoBA attention: a prefill chunk is cut so that one layer\'s score matrix (4 × heads × chunk × context bytes) fits', defaultText: '268435456 (256 MiB)' },
  { flag: 'prefix-cache-bytes', kind: 'int', min: 0, help: 'bytes of prefix-state snapshots kept (0 = off)' },
  { flag: 'prefix-cache-dir', kind: 'string', help: 'prefix snapshots on disk, in a folder several servers may share (they outlive restarts and serve every replica); unset = memory only' },
  { flag: 'prefix-cache-disk-bytes', kind: 'int', min: 1, help: 'bytes of prefix snapshots kept on disk (LRU; every server on the folder enforces it)', defaultText: '17179869184 (16 GiB)' },
  { flag: 'prefix-share-min-tokens', kind: 'int', min: 1, help: 'snapshots of at least this many tokens are written to --prefix-cache-dir as soon as they are taken (others when memory evicts them)', defaultText: '4096' },
  { flag: 'prefix-cache-read-timeout-seconds', kind: 'number', min: 0.001, help: 'a snapshot read from --prefix-cache-dir that takes longer is a miss', defaultText: '30' },
  { flag: 'metrics-compat', kind: 'enum', choices: ['none', 'vllm'], help: 'vllm: also export vllm:num_requests_waiting, vllm:num_requests_running, vllm:kv_cache_usage_perc (what an endpoint picker reads by default)', defaultText: 'none' },
  { flag: 'max-model-len', kind: 'int', min: 1, help: 'longest prompt + completion in tokens' },
  { flag: 'max-queue', kind: 'int', min: 0, help: 'waiting requests before 429' },
  { flag: 'body-limit-bytes', kind: 'int', min: 1024, help: 'largest request body accepted', defaultText: '67108864 (64 MiB)' },
  { flag: 'max-waiting-tokens', kind: 'int', min: 1, help: 'prompt tokens waiting for admission (queued, or being parsed and tokenized) before 429; a longer prompt is a 400', defaultText: '33554432 (2^25)' },
  { flag: 'max-messages', kind: 'int', min: 1, help: 'messages in one chat request', defaultText: '2048' },
  { flag: 'max-tools', kind: 'int', min: 0, help: 'tools in one chat request', defaultText: '128' },
  { flag: 'max-tools-bytes', kind: 'int', min: 0, help: 'size of the tools of one chat request, as JSON', defaultText: '1048576 (1 MiB)' },
  { flag: 'max-stop-strings', kind: 'int', min: 0, help: 'stop strings in one request', defaultText: '16' },
  { flag: 'max-stop-string-chars', kind: 'int', min: 1, help: 'length of one stop string', defaultText: '256' },
  { flag: 'max-detokenize-tokens', kind: 'int', min: 1, help: 'token ids in one /detokenize request', defaultText: '262144' },
  { flag: 'max-echo-tokens', kind: 'int', min: 0, help: 'longest prompt a completion may echo', defaultText: '65536' },
  { flag: 'max-prompt-logprobs-tokens', kind: 'int', min: 0, help: 'longest prompt whose logprobs a completion may return (echo + logprobs)', defaultText: '4096' },
  { flag: 'max-stream-buffer-bytes', kind: 'int', min: 65536, help: 'output a streaming client has not read yet; past it the client is disconnected and its request aborted', defaultText: '8388608 (8 MiB)' },
  { flag: 'allow-special-tokens-in-content', kind: 'bool', help: 'special tokens typed in user and tool message content become control tokens (otherwise they are encoded as plain text)', defaultText: 'off' },
  { flag: 'conversation-cache-entries', kind: 'int', min: 0, help: 'recent chat replies whose generated token ids are remembered, so the next turn sends the model those ids and resumes from the snapshot of the reply (LRU; 0 = off)', defaultText: '1024' },
  { flag: 'conversation-cache-tokens', kind: 'int', min: 0, help: 'token ids of those replies, all together (a longer reply is not remembered; 0 = off)', defaultText: '1048576' },
  { flag: 'drain-timeout-seconds', kind: 'number', min: 0, help: 'on SIGTERM, how long in-flight requests may finish', defaultText: '30' },
  { flag: 'engine-max-restarts', kind: 'int', min: 0, help: 'restarts of a lost inference worker within the window before /health/live fails', defaultText: '5' },
  { flag: 'engine-restart-window-seconds', kind: 'number', min: 1, help: 'window in which engine restarts are counted', defaultText: '600' },
  { flag: 'step-timeout-seconds', kind: 'number', min: 0, help: 'a step running longer means a hung inference worker: it is restarted (0 = never)', defaultText: '600' },
  { flag: 'cache-dir', kind: 'string', help: 'where built ONNX graphs are cached' },
  { flag: 'threads', kind: 'int', min: 1, help: 'onnxruntime intra-op threads' },
  { flag: 'decode-threads', kind: 'int', min: 0, help: 'threads of a second session, on the decode graph, for decode steps of ≤ 4 streams (costs a second copy of the weights); 0 = one session', defaultText: '1 on cpu for models of ≤ 64M parameters, else 0' },
  { flag: 'grammar-cache-entries', kind: 'int', min: 1, help: 'compiled grammars kept for structured outputs (LRU)', defaultText: '64' },
  { flag: 'log-level', kind: 'enum', choices: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], help: 'pino log level', defaultText: 'info' },
  { flag: 'keepalive-seconds', kind: 'number', min: 0.001, max: 10, help: 'SSE keep-alive comment interval while nothing else is sent', defaultText: '5' },
];

/** "max-num-seqs" → "SPIKESERVE_MAX_NUM_SEQS". */
export function envName(flag: string): string {
  return `SPIKESERVE_${flag.toUpperCase().replace(/-/g, '_')}`;
}

function parseValue(spec: FlagSpec, raw: string, source: string): string | number | boolean {
  const where = `${source}: --${spec.flag}`;
  switch (spec.kind) {
    case 'string':
      if (raw.trim() === '') throw new ConfigError(`${where} must not be empty`);
      return raw;
    case 'enum':
      if (!spec.choices?.includes(raw)) throw new ConfigError(`${where} must be one of ${spec.choices?.join(', ')}, got "${raw}"`);
      return raw;
    case 'bool':
      if (raw === 'true' || raw === '1') return true;
      if (raw === 'false' || raw === '0') return false;
      throw new ConfigError(`${where} must be true or false, got "${raw}"`);
    case 'int':
    case 'number': {
      const v = Number(raw);
      if (raw.trim() === '' || !Number.isFinite(v) || (spec.kind === 'int' && !Number.isInteger(v))) {
        throw new ConfigError(`${where} must be ${spec.kind === 'int' ? 'an integer' : 'a number'}, got "${raw}"`);
      }
      if (spec.min !== undefined && v < spec.min) throw new ConfigError(`${where} must be ≥ ${spec.min}, got ${v}`);
      if (spec.max !== undefined && v > spec.max) throw new ConfigError(`${where} must be ≤ ${spec.max}, got ${v}`);
      return v;
    }
  }
}

/** "https://a.example, http://localhost:3000" → the list; each must be * or scheme://host[:port]. */
function parseOrigins(raw: string | undefined): string[] {
  if (raw === undefined) return [];
  const origins = raw
    .split(',')
    .map((o) => o.trim())
    .filter((o) => o !== '');
  for (const o of origins) {
    if (o !== '*' && !/^https?:\/\/[^/\s?#]+$/.test(o)) {
      throw new ConfigError(`--allowed-origins: "${o}" is not an origin (scheme://host[:port], no path) or *`);
    }
  }
  return origins;
}

/** Parses `--flag value` / `--flag=value` arguments (after the subcommand) plus the environment. */
export function parseServerConfig(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): ServerConfig {
  const bySpec = new Map(FLAGS.map((s) => [s.flag, s]));
  const values = new Map<string, string | number | boolean>();
  for (const spec of FLAGS) {
    const raw = env[envName(spec.flag)];
    if (raw !== undefined && raw !== '') values.set(spec.flag, parseValue(spec, raw, envName(spec.flag)));
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (!arg.startsWith('--')) throw new ConfigError(`unexpected argument "${arg}" (flags start with --; see --help)`);
    const eq = arg.indexOf('=');
    const name = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
    const spec = bySpec.get(name);
    if (spec === undefined) throw new ConfigError(`unknown flag --${name} (see --help)`);
    let raw: string | undefined;
    if (eq >= 0) raw = arg.slice(eq + 1);
    else if (spec.kind === 'bool') raw = 'true'; // a switch: `--flag` alone turns it on
    else {
      raw = argv[i + 1];
      i++;
    }
    if (raw === undefined) throw new ConfigError(`flag --${name} needs a value`);
    values.set(name, parseValue(spec, raw, 'flag'));
  }
  const str = (k: string): string | undefined => values.get(k) as string | undefined;
  const num = (k: string): number | undefined => values.get(k) as number | undefined;
  const bool = (k: string): boolean | undefined => values.get(k) as boolean | undefined;

  const modelDir = resolve(str('model') ?? DEFAULT_MODEL_DIR);
  const apiKeys = (str('api-key') ?? '')
    .split(',')
    .map((k) => k.trim())
    .filter((k) => k !== '');
  const config: { -readonly [K in keyof ServerConfig]: ServerConfig[K] } = {
    modelDir,
    servedModelName: str('served-model-name') ?? basename(modelDir),
    host: str('host') ?? '127.0.0.1',
    port: num('port') ?? 8000,
    apiKeys,
    allowedOrigins: parseOrigins(str('allowed-origins')),
    device: (str('device') ?? 'cpu') as Device,
    bodyLimitBytes: num('body-limit-bytes') ?? 64 * 1024 * 1024,
    maxWaitingTokens: num('max-waiting-tokens') ?? 2 ** 25,
    maxMessages: num('max-messages') ?? 2048,
    maxTools: num('max-tools') ?? 128,
    maxToolsBytes: num('max-tools-bytes') ?? 2 ** 20,
    maxStopStrings: num('max-stop-strings') ?? 16,
    maxStopStringChars: num('max-stop-string-chars') ?? 256,
    maxDetokenizeTokens: num('max-detokenize-tokens') ?? 262_144,
    maxEchoTokens: num('max-echo-tokens') ?? 65_536,
    maxPromptLogprobsTokens: num('max-prompt-logprobs-tokens') ?? 4096,
    maxStreamBufferBytes: num('max-stream-buffer-bytes') ?? 8 * 2 ** 20,
    allowSpecialTokensInContent: bool('allow-special-tokens-in-content') ?? false,
    conversationCacheEntries: num('conversation-cache-entries') ?? 1024,
    conversationCacheTokens: num('conversation-cache-tokens') ?? 2 ** 20,
    drainTimeoutSeconds: num('drain-timeout-seconds') ?? 30,
    engineMaxRestarts: num('engine-max-restarts') ?? 5,
    engineRestartWindowSeconds: num('engine-restart-window-seconds') ?? 600,
    stepTimeoutSeconds: num('step-timeout-seconds') ?? 600,
    logLevel: (str('log-level') ?? 'info') as LogLevel,
    keepaliveSeconds: num('keepalive-seconds') ?? 5,
    metricsCompat: (str('metrics-compat') ?? 'none') as MetricsCompat,
  };
  if (config.device !== 'cpu' && (num('decode-threads') ?? 0) > 0) {
    throw new ConfigError(`--decode-threads is for --device cpu (a second GPU session would hold a second copy of the weights on the device)`);
  }
  const prefixCacheDir = str('prefix-cache-dir');
  if (prefixCacheDir !== undefined) {
    if (num('prefix-cache-bytes') === 0) throw new ConfigError('--prefix-cache-dir needs the prefix cache: --prefix-cache-bytes is 0');
    config.prefixCacheDir = resolve(prefixCacheDir);
  }
  const weights = str('weights');
  if (weights !== undefined) config.weights = weights as Weights;
  const optionalInts = [
    ['max-num-seqs', 'maxNumSeqs'],
    ['kv-cache-bytes', 'kvCacheBytes'],
    ['page-tokens', 'pageTokens'],
    ['max-batched-tokens', 'maxBatchedTokens'],
    ['prefill-chunk-tokens', 'prefillChunkTokens'],
    ['max-attention-score-bytes', 'maxAttentionScoreBytes'],
    ['prefix-cache-bytes', 'prefixCacheBytes'],
    ['prefix-cache-disk-bytes', 'prefixCacheDiskBytes'],
    ['prefix-share-min-tokens', 'prefixShareMinTokens'],
    ['prefix-cache-read-timeout-seconds', 'prefixCacheReadTimeoutSeconds'],
    ['max-model-len', 'maxModelLen'],
    ['max-queue', 'maxQueue'],
    ['threads', 'threads'],
    ['decode-threads', 'decodeThreads'],
    ['grammar-cache-entries', 'grammarCacheEntries'],
  ] as const;
  for (const [flag, key] of optionalInts) {
    const v = num(flag);
    if (v !== undefined) config[key] = v;
  }
  const cacheDir = str('cache-dir');
  if (cacheDir !== undefined) config.cacheDir = resolve(cacheDir);
  return Object.freeze(config);
}

/** The --help text, generated from FLAGS so it never misses one. */
export function helpText(version: string): string {
  const lines = [
    `spikeserve ${version} — OpenAI-compatible server for hybrid linear (GLA + sliding-window) models`,
    '',
    'Usage:',
    '  spikeserve [serve] [flags]        serve the model over HTTP (default subcommand)',
    '  spikeserve inspect --model DIR    print what a checkpoint holds and what serving it costs',
    '  spikeserve --help | --version',
    '',
    'Flags (each also read from the environment variable shown):',
  ];
  for (const s of FLAGS) {
    const value = s.kind === 'enum' ? (s.choices ?? []).join('|') : s.kind === 'string' ? 'STR' : s.kind === 'int' ? 'INT' : s.kind === 'bool' ? '' : 'NUM';
    const def = s.defaultText !== undefined ? ` (default: ${s.defaultText})` : '';
    const head = `  --${s.flag} ${value}`;
    // A long value list gets its own line rather than running into the description.
    if (head.length >= 40) lines.push(head, ' '.repeat(40) + `${s.help}${def}`);
    else lines.push(head.padEnd(40) + `${s.help}${def}`);
    lines.push(' '.repeat(40) + `env ${envName(s.flag)}`);
  }
  return lines.join('\n') + '\n';
}
