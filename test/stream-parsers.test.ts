// The two parsers that read generated text as it streams, against plain references on random input:
// StopStringMatcher streams exactly the text before the first stop string (the earliest end, the
// longest one ending there), whatever the cut into pieces; ToolCallParser splits a reply into content
// and calls the same way for any cut, including replies with long, unterminated or broken blocks.
import { describe, expect, it } from 'vitest';
import { StopStringMatcher } from '../src/engine/detokenizer.ts';
import { parseToolCalls, ToolCallParser, type ToolCall } from '../src/routes/chat-completions/tool-calls.ts';

function lcg(seed: number): () => number {
  let x = seed >>> 0;
  return () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return x / 2 ** 32;
  };
}

/** Reference: the text before the stop occurrence that ends first (ties: the longest), by brute force. */
function textBeforeFirstStop(text: string, stops: readonly string[]): { text: string; stopped: boolean } {
  for (let end = 1; end <= text.length; end++) {
    let best = 0;
    for (const s of stops) if (s.length > 0 && s.length <= end && text.startsWith(s, end - s.length)) best = Math.max(best, s.length);
    if (best > 0) return { text: text.slice(0, end - best), stopped: true };
  }
  return { text, stopped: false };
}

/** Cuts `text` into pieces of 1–`maxPiece` chars. */
function cut(text: string, rand: () => number, maxPiece: number): string[] {
  const pieces: string[] = [];
  for (let at = 0; at < text.length; ) {
    const end = Math.min(text.length, at + 1 + Math.floor(rand() * maxPiece));
    pieces.push(text.slice(at, end));
    at = end;
  }
  return pieces;
}

function streamStops(pieces: readonly string[], stops: readonly string[]): { text: string; stopped: boolean } {
  const m = new StopStringMatcher(stops);
  let text = '';
  for (const p of pieces) {
    const r = m.push(p);
    text += r.emit;
    if (r.stopped) return { text, stopped: true };
  }
  return { text: text + m.flush(), stopped: false };
}

describe('StopStringMatcher', () => {
  it('equals the brute-force reference on random texts, stop sets and cuts (small alphabet: many overlaps)', () => {
    const rand = lcg(11);
    const alphabet = 'ab c';
    const word = (n: number): string => Array.from({ length: n }, () => alphabet[Math.floor(rand() * alphabet.length)]).join('');
    for (let trial = 0; trial < 2000; trial++) {
      const stops = Array.from({ length: 1 + Math.floor(rand() * 4) }, () => word(1 + Math.floor(rand() * 5)));
      const text = word(Math.floor(rand() * 40));
      const expected = textBeforeFirstStop(text, stops);
      expect(streamStops(cut(text, rand, 6), stops), `${JSON.stringify(stops)} ${JSON.stringify(text)}`).toEqual(expected);
    }
  });

  it('prefers the longest of the stop strings that end at the same place, and never streams part of one', () => {
    expect(streamStops(['xabc'], ['bc', 'abc'])).toEqual({ text: 'x', stopped: true });
    expect(streamStops(['xab', 'c'], ['abc', 'bc'])).toEqual({ text: 'x', stopped: true });
    // 'bc' ends before 'abcd' does: the stream stops there, whatever the cut.
    expect(streamStops(['abcd'], ['abcd', 'bc'])).toEqual({ text: 'a', stopped: true });
    expect(streamStops(['a', 'b', 'c', 'd'], ['abcd', 'bc'])).toEqual({ text: 'a', stopped: true });
  });

  it('handles surrogate pairs and a long stream with a stop at the very end', () => {
    const stops = ['🛑 end', '</answer>'];
    const text = `${'lorem ipsum 🤗 '.repeat(20_000)}</answer> tail`;
    const expected = textBeforeFirstStop(text, stops);
    expect(streamStops(cut(text, lcg(5), 9), stops)).toEqual(expected);
    expect(expected.stopped).toBe(true);
  });
});

function callsOf(calls: readonly ToolCall[]): [string, string][] {
  return calls.map((c) => [c.function.name, c.function.arguments]);
}

function streamTools(pieces: readonly string[]): { content: string; calls: [string, string][] } {
  const p = new ToolCallParser();
  let content = '';
  const calls: ToolCall[] = [];
  for (const piece of pieces) {
    const r = p.push(piece);
    content += r.content;
    calls.push(...r.calls);
  }
  const end = p.finish();
  return { content: content + end.content, calls: callsOf([...calls, ...end.calls]) };
}

describe('ToolCallParser', () => {
  const call = (name: string, args: object): string => `<tool_call>\n${JSON.stringify({ name, arguments: args })}\n</tool_call>`;

  it('gives the same content and calls for every cut of a reply', () => {
    const rand = lcg(7);
    const replies = [
      `Let me check. ${call('get_weather', { city: 'Paris' })} and ${call('get_time', { tz: 'CET' })} done`,
      `<tool_call>{"name": 1}</tool_call> broken, <tool_call>not json</tool_call> <tool_ca`,
      `text with </tool_call> close tags and <tool_call>{"name":"f","arguments":{"s":"</tool_call"}} </tool_call> x`,
      `${call('long', { text: 'x'.repeat(50_000) })} unterminated <tool_call>{"name": "g"`,
    ];
    for (const reply of replies) {
      const whole = streamTools([reply]);
      const parsed = parseToolCalls(reply);
      expect(whole.calls).toEqual(callsOf(parsed.calls));
      for (let trial = 0; trial < 30; trial++) expect(streamTools(cut(reply, rand, 12)), reply.slice(0, 60)).toEqual(whole);
    }
  });

  it('streams a block of a megabyte a few characters at a time, keeping all of it', () => {
    const args = { data: 'y'.repeat(1 << 20) };
    const reply = `before ${call('big', args)} after`;
    const out = streamTools(cut(reply, lcg(3), 4));
    expect(out.content).toBe('before  after');
    expect(out.calls).toEqual([['big', JSON.stringify(args)]]);
  });
});
