// Test helper: the real server around the real Engine. Uses the built-in default model
// (models/spikingbrain-tiny) when it is present; otherwise writes a tiny random gla_swa
// checkpoint with a byte-level BPE tokenizer (256 byte tokens + ChatML specials) and the official
// SpikingBrain chat template. ONNX builds are cached under .cache/ so test files share them.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { FastifyInstance, FastifyServerOptions } from 'fastify';
import { Engine, type EngineOptions } from '../../src/engine/engine.ts';
import { TextTokenizer } from '../../src/engine/tokenizer.ts';
import { buildApp } from '../../src/main/app.ts';
import { loadChatAssets } from '../../src/routes/chat-template.ts';
import { DEFAULT_MODEL_DIR, PACKAGE_ROOT, parseServerConfig, type ServerConfig } from '../../src/server/config.ts';
import { ServerMetrics } from '../../src/server/metrics.ts';
import type { EnginePort } from '../../src/server/ports.ts';
import { makeRandomTinyCheckpoint } from './checkpoint-writer.ts';

export const CACHE_DIR = join(PACKAGE_ROOT, '.cache', 'test-onnx');
const SPEC_DIR = join(PACKAGE_ROOT, 'test', 'fixtures', 'spikingbrain-7b');

/** GPT-2's byte → printable-character map used by byte-level BPE vocabularies. */
export function byteAlphabet(): string[] {
  const out: string[] = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    out.push(String.fromCodePoint(printable ? b : 256 + extra++));
  }
  return out;
}

const SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>'];
/** Token ids of a byte-level test model: bytes 0..255, then SPECIALS. */
const TEST_EOS_ID = 256;
export const BYTE_VOCAB_SIZE = 256 + SPECIALS.length;

/** A byte-level tokenizer.json + tokenizer_config.json (ChatML template) + generation_config.json. */
export function writeByteTokenizer(dir: string): void {
  const vocab: Record<string, number> = {};
  byteAlphabet().forEach((ch, id) => (vocab[ch] = id));
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };
  const added = SPECIALS.map((content, i) => ({ id: 256 + i, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }));
  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: null,
    decoder: byteLevel,
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false, byte_fallback: false, vocab, merges: [] },
  };
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tokenizerJson));
  const template = (JSON.parse(readFileSync(join(SPEC_DIR, 'tokenizer_config.json'), 'utf8')) as { chat_template: string }).chat_template;
  writeFileSync(
    join(dir, 'tokenizer_config.json'),
    JSON.stringify({ bos_token: '<|im_start|>', eos_token: '<|endoftext|>', chat_template: template, added_tokens_decoder: {} }),
  );
  writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: TEST_EOS_ID }));
}

/**
 * The model directory tests serve: the default model if it is there, else a generated one
 * (also forced with SPIKESERVE_TEST_GENERATED_MODEL=1, to check the tests do not depend on it).
 */
export function testModelDir(): string {
  const haveDefault = existsSync(join(DEFAULT_MODEL_DIR, 'model.safetensors')) && existsSync(join(DEFAULT_MODEL_DIR, 'config.json'));
  if (haveDefault && process.env['SPIKESERVE_TEST_GENERATED_MODEL'] !== '1') return DEFAULT_MODEL_DIR;
  const dir = join(PACKAGE_ROOT, '.cache', 'test-model-bytes');
  if (!existsSync(join(dir, 'tokenizer.json'))) {
    mkdirSync(dir, { recursive: true });
    makeRandomTinyCheckpoint(dir, { numLayers: 4, slidingWindow: 16, vocabSize: 320, seed: 7, headDim: 16, numHeads: 4 });
    writeByteTokenizer(dir);
  }
  return dir;
}

export interface TestServer {
  readonly app: FastifyInstance;
  readonly engine: Engine;
  readonly tokenizer: TextTokenizer;
  readonly config: ServerConfig;
  readonly metrics: ServerMetrics;
  /** Base URL once listen() was called (a second call returns the same). */
  url: string;
  listen(): Promise<string>;
  close(): Promise<void>;
}

export interface TestServerOptions {
  /** Extra CLI flags, e.g. ['--api-key', 'k1']. */
  readonly flags?: readonly string[];
  readonly engine?: Partial<EngineOptions>;
  /** Another checkpoint than testModelDir(). */
  readonly modelDir?: string;
  /** Pino options (e.g. a stream a test reads); default silent. */
  readonly logger?: FastifyServerOptions['logger'];
}

/** The app (not listening, silent) around an engine or its promise, serving the test model with these CLI flags. */
export async function buildTestApp(
  engine: EnginePort | Promise<EnginePort>,
  tokenizer: TextTokenizer,
  flags: readonly string[] = [],
  modelDir: string = testModelDir(),
  logger: FastifyServerOptions['logger'] = false,
): Promise<{ app: FastifyInstance; config: ServerConfig; metrics: ServerMetrics }> {
  const config = parseServerConfig(['--model', modelDir, '--port', '0', ...flags], {});
  const metrics = new ServerMetrics(config.servedModelName);
  const app = buildApp({ engine, tokenizer, chatAssets: await loadChatAssets(modelDir, tokenizer), config, metrics, version: 'test', logger });
  return { app, config, metrics };
}

/** Starts a real Engine and builds the app around it (not listening). */
export async function startTestServer(opts: TestServerOptions = {}): Promise<TestServer> {
  const modelDir = opts.modelDir ?? testModelDir();
  const tokenizer = await TextTokenizer.load(modelDir);
  mkdirSync(CACHE_DIR, { recursive: true });
  const engine = await Engine.start({ modelDir, cacheDir: CACHE_DIR, intraOpThreads: 1, maxModelLen: 4096, ...opts.engine });
  const { app, config, metrics } = await buildTestApp(engine, tokenizer, opts.flags, modelDir, opts.logger ?? false);
  await app.ready();
  const server: TestServer = {
    app,
    engine,
    tokenizer,
    config,
    metrics,
    url: '',
    async listen() {
      if (server.url !== '') return server.url;
      await app.listen({ host: '127.0.0.1', port: 0 });
      server.url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
      return server.url;
    },
    async close() {
      await app.close();
      await engine.shutdown();
    },
  };
  return server;
}

/**
 * Polls until the engine holds nothing (an abort reaches the worker shortly after the client leaves);
 * throws with what it still holds when that does not happen within `timeoutMs` (a deadline that only
 * stops a test that would otherwise pass while something leaked).
 */
export async function waitEngineIdle(engine: Engine, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = engine.stats();
    if (s.numRunning + s.numWaiting + s.kvPagesUsed + s.stateSlotsUsed + s.stateBytesInUse === 0) return;
    if (Date.now() > deadline) {
      const held = { running: s.numRunning, waiting: s.numWaiting, kvPages: s.kvPagesUsed, stateSlots: s.stateSlotsUsed, stateBytes: s.stateBytesInUse };
      throw new Error(`the engine is not idle after ${timeoutMs / 1000} s: ${JSON.stringify(held)}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}
