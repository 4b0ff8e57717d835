// The server's request limits (flags --max-messages, --max-tools, --max-stop-strings, …, in
// src/server/config.ts): each check is a 400 naming the field, with OpenAI's codes for an array or a
// string over its maximum. They run before anything costly (rendering, tokenizing, the engine), so an
// oversized request costs the server no more than reading it.
import type { ServerConfig } from '../../server/config.ts';
import { InvalidRequestError } from '../../server/errors.ts';

export type RequestLimits = Pick<
  ServerConfig,
  | 'maxMessages'
  | 'maxTools'
  | 'maxToolsBytes'
  | 'maxStopStrings'
  | 'maxStopStringChars'
  | 'maxDetokenizeTokens'
  | 'maxEchoTokens'
  | 'maxPromptLogprobsTokens'
>;

function tooMany(param: string, what: string, n: number, max: number, flag: string): InvalidRequestError {
  return new InvalidRequestError(`'${param}' holds ${n} ${what}; this server accepts at most ${max} (${flag})`, param, 'array_above_max_length');
}

export function checkMessages(limits: RequestLimits, numMessages: number): void {
  if (numMessages > limits.maxMessages) throw tooMany('messages', 'messages', numMessages, limits.maxMessages, '--max-messages');
}

/** Count, then size as JSON (what the chat template writes into the prompt). */
export function checkTools(limits: RequestLimits, tools: readonly unknown[]): void {
  if (tools.length > limits.maxTools) throw tooMany('tools', 'tools', tools.length, limits.maxTools, '--max-tools');
  const bytes = Buffer.byteLength(JSON.stringify(tools));
  if (bytes > limits.maxToolsBytes) {
    throw new InvalidRequestError(`'tools' take ${bytes} bytes as JSON; this server accepts at most ${limits.maxToolsBytes} (--max-tools-bytes)`, 'tools', 'array_above_max_length');
  }
}

/** Stop strings are matched against every streamed character: their number and length are bounded. */
export function checkStopStrings(limits: RequestLimits, stop: readonly string[]): void {
  if (stop.length > limits.maxStopStrings) throw tooMany('stop', 'stop strings', stop.length, limits.maxStopStrings, '--max-stop-strings');
  for (const s of stop) {
    if (s.length > limits.maxStopStringChars) {
      throw new InvalidRequestError(
        `'stop' holds a string of ${s.length} characters; this server accepts at most ${limits.maxStopStringChars} (--max-stop-string-chars)`,
        'stop',
        'string_above_max_length',
      );
    }
  }
}

export function checkDetokenize(limits: RequestLimits, numTokens: number): void {
  if (numTokens > limits.maxDetokenizeTokens) throw tooMany('tokens', 'token ids', numTokens, limits.maxDetokenizeTokens, '--max-detokenize-tokens');
}

/**
 * `echo` returns the prompt's text, and with `logprobs` one entry per prompt token (with its
 * alternatives): both are built and written by the HTTP thread and the engine keeps every entry until
 * the first token, so each has its own bound.
 */
export function checkEcho(limits: RequestLimits, numPromptTokens: number, withLogprobs: boolean): void {
  if (withLogprobs && numPromptTokens > limits.maxPromptLogprobsTokens) {
    throw new InvalidRequestError(
      `'echo' with 'logprobs' returns the logprobs of every prompt token; this server does so for prompts of at most ${limits.maxPromptLogprobsTokens} tokens (--max-prompt-logprobs-tokens), and this one has ${numPromptTokens}`,
      'logprobs',
      'prompt_logprobs_too_long',
    );
  }
  if (numPromptTokens > limits.maxEchoTokens) {
    throw new InvalidRequestError(
      `'echo' returns the prompt; this server does so for prompts of at most ${limits.maxEchoTokens} tokens (--max-echo-tokens), and this one has ${numPromptTokens}`,
      'echo',
      'echo_too_long',
    );
  }
}
