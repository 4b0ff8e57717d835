// src/main/ is the composition root, a layer above routes/ so that it alone may import every layer.
//
// The `spikeserve` command: `serve` (default) starts the HTTP server at once (/health is 503 while
// the engine loads), `inspect --model DIR` describes a checkpoint, plus --help and --version.
// Bad flags print a one-line error and exit 2; a model that fails to load exits 1.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Engine, type EngineLogLevel, type EngineOptions } from '../engine/engine.ts';
import { ModelLoadError } from '../engine/errors.ts';
import { loadModelConfig } from '../engine/model/config.ts';
import { inspectModel } from '../engine/model/inspect.ts';
import { TextTokenizer } from '../engine/tokenizer.ts';
import { loadChatAssets } from '../routes/chat-template.ts';
import { ConfigError, DEFAULT_MODEL_DIR, helpText, PACKAGE_ROOT, parseServerConfig, type ServerConfig } from '../server/config.ts';
import { ServerMetrics } from '../server/metrics.ts';
import type { EnginePort } from '../server/ports.ts';
import { installShutdownHandlers } from '../server/shutdown.ts';
import { buildApp } from './app.ts';

const VERSION = (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;

function fail(message: string, code: number): never {
  process.stderr.write(`spikeserve: ${message}\n`);
  process.exit(code);
}

function engineOptions(config: ServerConfig): EngineOptions {
  // Unset --weights and --decode-threads: the engine picks them for the checkpoint and device ('auto',
  // Model.load: int8 and a 1-thread decode session for small models on the CPU).
  const opts: { -readonly [K in keyof EngineOptions]: EngineOptions[K] } = {
    modelDir: config.modelDir,
    device: config.device,
    weightDtype: config.weights ?? 'auto',
    supervision: {
      maxRestarts: config.engineMaxRestarts,
      restartWindowMs: config.engineRestartWindowSeconds * 1000,
      stepTimeoutMs: config.stepTimeoutSeconds * 1000,
    },
  };
  if (config.decodeThreads === undefined) opts.decodeIntraOpThreads = 'auto';
  else if (config.decodeThreads > 0) opts.decodeIntraOpThreads = config.decodeThreads;
  if (config.cacheDir !== undefined) opts.cacheDir = config.cacheDir;
  if (config.maxNumSeqs !== undefined) opts.maxNumSeqs = config.maxNumSeqs;
  if (config.kvCacheBytes !== undefined) opts.kvCacheBytes = config.kvCacheBytes;
  if (config.pageTokens !== undefined) opts.pageTokens = config.pageTokens;
  if (config.maxBatchedTokens !== undefined) opts.maxBatchedTokens = config.maxBatchedTokens;
  if (config.prefillChunkTokens !== undefined) opts.prefillChunkTokens = config.prefillChunkTokens;
  if (config.maxAttentionScoreBytes !== undefined) opts.maxAttentionScoreBytes = config.maxAttentionScoreBytes;
  if (config.prefixCacheBytes !== undefined) opts.prefixCacheBytes = config.prefixCacheBytes;
  if (config.prefixCacheDir !== undefined) opts.prefixCacheDir = config.prefixCacheDir;
  if (config.prefixCacheDiskBytes !== undefined) opts.prefixCacheDiskBytes = config.prefixCacheDiskBytes;
  if (config.prefixShareMinTokens !== undefined) opts.prefixShareMinTokens = config.prefixShareMinTokens;
  if (config.prefixCacheReadTimeoutSeconds !== undefined) opts.prefixCacheReadTimeoutSeconds = config.prefixCacheReadTimeoutSeconds;
  if (config.maxQueue !== undefined) opts.maxQueue = config.maxQueue;
  if (config.maxModelLen !== undefined) opts.maxModelLen = config.maxModelLen;
  if (config.threads !== undefined) opts.intraOpThreads = config.threads;
  if (config.grammarCacheEntries !== undefined) opts.grammarCacheEntries = config.grammarCacheEntries;
  opts.maxPromptLogprobsTokens = config.maxPromptLogprobsTokens;
  return opts;
}

async function serve(argv: readonly string[]): Promise<void> {
  let config: ServerConfig;
  try {
    config = parseServerConfig(argv);
  } catch (err) {
    if (err instanceof ConfigError) fail(err.message, 2);
    throw err;
  }
  if (!existsSync(join(config.modelDir, 'config.json'))) fail(`--model: no config.json in ${config.modelDir}`, 2);
  // The model's config first (cheap): an unknown model or a malformed config says so in one line
  // before the tokenizer or anything else is loaded.
  try {
    loadModelConfig(config.modelDir);
  } catch (err) {
    if (err instanceof ModelLoadError) fail(err.message, 1);
    throw err;
  }

  const tokenizer = await TextTokenizer.load(config.modelDir);
  const metrics = new ServerMetrics(config.servedModelName, { compat: config.metricsCompat });
  let log: ((msg: string, level: EngineLogLevel) => void) | null = null;
  const enginePromise: Promise<EnginePort> = Engine.start(engineOptions(config), (msg, level = 'info') => log?.(msg, level));
  const app = buildApp({
    engine: enginePromise,
    tokenizer,
    chatAssets: await loadChatAssets(config.modelDir, tokenizer),
    config,
    metrics,
    version: VERSION,
    logger: { level: config.logLevel },
  });
  log = (msg, level) => app.log[level]({ component: 'engine' }, msg);
  enginePromise.then(
    (engine) =>
      app.log.info(
        { model: config.servedModelName, device: config.device, weights: config.weights ?? 'auto', maxModelLen: engine.maxModelLen },
        'model loaded; ready',
      ),
    (err: unknown) => {
      app.log.fatal({ err }, 'the model failed to load; exiting');
      // One plain line for the operator (e.g. "--device webgpu: no WebGPU adapter found …").
      fail((err as Error).message, 1);
    },
  );
  installShutdownHandlers(app, {
    drainTimeoutSeconds: config.drainTimeoutSeconds,
    onClosed: async () => {
      // A step in flight may outlast the HTTP drain (a 7B prefill chunk takes ~12 s on a CPU): wait for
      // it with what is left of --drain-timeout-seconds, at least 5 s (the chart's grace period adds 15).
      const drainedMs = performance.now() - (app.serving.drainStartedMs ?? performance.now());
      await app.serving.loadedEngine?.shutdown({ stepTimeoutMs: Math.max(5000, config.drainTimeoutSeconds * 1000 - drainedMs) });
      await tokenizer.close(); // its encoding worker, if a long prompt started one
    },
    exit: (code) => process.exit(code),
  });
  await app.listen({ host: config.host, port: config.port });
}

function inspect(argv: readonly string[]): void {
  let dir = DEFAULT_MODEL_DIR;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '--model') dir = argv[++i] ?? fail('--model needs a value', 2);
    else if (a.startsWith('--model=')) dir = a.slice('--model='.length);
    else fail(`inspect: unknown argument "${a}" (usage: spikeserve inspect --model DIR)`, 2);
  }
  process.stdout.write(`${inspectModel(dir)}\n`);
}

async function main(argv: readonly string[]): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(helpText(VERSION));
    return;
  }
  if (argv.includes('--version') || argv.includes('-v')) {
    process.stdout.write(`${VERSION}\n`);
    return;
  }
  const [first, ...rest] = argv;
  if (first === 'inspect') return inspect(rest);
  if (first === 'serve') return serve(rest);
  if (first !== undefined && !first.startsWith('-')) fail(`unknown subcommand "${first}" (see --help)`, 2);
  return serve(argv);
}

await main(process.argv.slice(2)).catch((err: unknown) => fail((err as Error).message, 1));
