// Server configuration and the CLI: defaults, environment variables, flag precedence, validation
// errors (exit 2), --help listing every flag, --version, and `inspect`.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ConfigError, DEFAULT_MODEL_DIR, envName, FLAGS, helpText, PACKAGE_ROOT, parseServerConfig } from '../src/server/config.ts';
import { testModelDir } from './helpers/server.ts';

const run = promisify(execFile);

async function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    // The package's bin entry, from another cwd: the default model must not depend on the cwd.
    const { stdout, stderr } = await run(process.execPath, [join(PACKAGE_ROOT, 'bin/spikeserve.js'), ...args], {
      cwd: '/',
      env: { ...process.env, ...env },
      timeout: 60_000,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('parseServerConfig', () => {
  it('has the documented defaults, the model resolved from the package', () => {
    const c = parseServerConfig([], {});
    expect(c.modelDir).toBe(DEFAULT_MODEL_DIR);
    expect(DEFAULT_MODEL_DIR).toBe(join(PACKAGE_ROOT, 'models', 'spikingbrain-tiny'));
    expect(c).toMatchObject({ servedModelName: 'spikingbrain-tiny', host: '127.0.0.1', port: 8000, apiKeys: [], device: 'cpu', bodyLimitBytes: 64 * 1024 * 1024, drainTimeoutSeconds: 30, logLevel: 'info', keepaliveSeconds: 5 });
    expect(c.maxNumSeqs).toBeUndefined();
    expect(c.weights).toBeUndefined(); // the engine picks ('auto'): int8 on cpu (float32 for W8ASpike), float16 on GPUs
    expect(c.decodeThreads).toBeUndefined(); // 'auto': a 1-thread decode session for small models on cpu
  });

  it('has the documented request limits, each settable', () => {
    expect(parseServerConfig([], {})).toMatchObject({
      maxWaitingTokens: 2 ** 25,
      maxMessages: 2048,
      maxTools: 128,
      maxToolsBytes: 2 ** 20,
      maxStopStrings: 16,
      maxStopStringChars: 256,
      maxDetokenizeTokens: 262_144,
      maxEchoTokens: 65_536,
      maxPromptLogprobsTokens: 4096,
      maxStreamBufferBytes: 8 * 2 ** 20,
      allowSpecialTokensInContent: false,
    });
    const c = parseServerConfig(['--max-messages', '3', '--max-stop-string-chars=5', '--max-prompt-logprobs-tokens', '0'], { SPIKESERVE_MAX_TOOLS: '2' });
    expect(c).toMatchObject({ maxMessages: 3, maxStopStringChars: 5, maxPromptLogprobsTokens: 0, maxTools: 2 });
  });

  it('takes a switch alone or with =true/=false, and from the environment', () => {
    expect(parseServerConfig(['--allow-special-tokens-in-content', '--port', '1'], {})).toMatchObject({ allowSpecialTokensInContent: true, port: 1 });
    expect(parseServerConfig(['--allow-special-tokens-in-content=false'], {}).allowSpecialTokensInContent).toBe(false);
    expect(parseServerConfig([], { SPIKESERVE_ALLOW_SPECIAL_TOKENS_IN_CONTENT: 'true' }).allowSpecialTokensInContent).toBe(true);
    expect(() => parseServerConfig(['--allow-special-tokens-in-content=maybe'], {})).toThrow(/must be true or false/);
  });

  it('reads SPIKESERVE_* variables; a flag beats its variable; both --f v and --f=v work', () => {
    const env = { SPIKESERVE_PORT: '9000', SPIKESERVE_MAX_NUM_SEQS: '8', SPIKESERVE_API_KEY: 'a, b ,c' };
    const c = parseServerConfig(['--port=9100', '--served-model-name', 'mine', '--keepalive-seconds', '0.5'], env);
    expect(c.port).toBe(9100);
    expect(c.maxNumSeqs).toBe(8);
    expect(c.apiKeys).toEqual(['a', 'b', 'c']);
    expect(c.servedModelName).toBe('mine');
    expect(c.keepaliveSeconds).toBe(0.5);
    expect(parseServerConfig([], { SPIKESERVE_WEIGHTS: 'int8' }).weights).toBe('int8');
    expect(parseServerConfig(['--weights', 'int4'], { SPIKESERVE_WEIGHTS: 'int8' }).weights).toBe('int4');
    expect(parseServerConfig([], { SPIKESERVE_DECODE_THREADS: '1' }).decodeThreads).toBe(1);
    expect(parseServerConfig([], {}).decodeThreads).toBeUndefined();
    expect(parseServerConfig(['--decode-threads', '0'], {}).decodeThreads).toBe(0); // one session
    expect(parseServerConfig(['--device', 'webgpu', '--decode-threads', '0'], {}).decodeThreads).toBe(0);
  });

  it.each([
    [['--port', 'abc'], /--port must be an integer/],
    [['--port', '70000'], /--port must be ≤ 65535/],
    [['--keepalive-seconds', '11'], /--keepalive-seconds must be ≤ 10/],
    [['--device', 'tpu'], /--device must be one of cpu, webgpu, cuda/],
    [['--weights', 'bf16'], /--weights must be one of float32, float16, int8, int4/],
    [['--prefix-cache-dir', '/tmp/x', '--prefix-cache-bytes', '0'], /--prefix-cache-dir needs the prefix cache/],
    [['--device', 'webgpu', '--decode-threads', '1'], /--decode-threads is for --device cpu/],
    [['--decode-threads', '-1'], /--decode-threads must be ≥ 0/],
    [['--max-num-seqs', '0'], /--max-num-seqs must be ≥ 1/],
    [['--nope', '1'], /unknown flag --nope/],
    [['--port'], /--port needs a value/],
    [['stray'], /unexpected argument "stray"/],
  ])('rejects %j', (argv, message) => {
    expect(() => parseServerConfig(argv, {})).toThrow(ConfigError);
    expect(() => parseServerConfig(argv, {})).toThrow(message);
  });

  it('names the variable when an environment value is bad', () => {
    expect(() => parseServerConfig([], { SPIKESERVE_THREADS: 'many' })).toThrow(/SPIKESERVE_THREADS: --threads must be an integer/);
  });

  it('--help text lists every flag and its variable', () => {
    const text = helpText('1.2.3');
    for (const f of FLAGS) {
      expect(text).toContain(`--${f.flag} `);
      expect(text).toContain(envName(f.flag));
    }
  });
});

describe('the spikeserve command', () => {
  // Each run starts a TypeScript process (seconds on a shared machine): three runs cover the paths.
  it('--help lists every flag', async () => {
    const help = await cli(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain((JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version);
    for (const f of FLAGS) expect(help.stdout).toContain(`--${f.flag}`);
  });

  it('exits 2 with one line for a bad flag', async () => {
    const bad = await cli(['serve', '--port', 'x']);
    expect(bad.code).toBe(2);
    expect(bad.stderr.trim()).toBe('spikeserve: flag: --port must be an integer, got "x"');
  });

  it('inspect describes a checkpoint', async () => {
    const out = await cli(['inspect', '--model', testModelDir()]);
    expect(out.code).toBe(0);
    expect(out.stdout).toMatch(/type: gla_swa/);
  });
});
