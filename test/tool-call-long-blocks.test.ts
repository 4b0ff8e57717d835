// A tool-call block of many pieces (one per token, thousands of them): ToolCallParser joins the pieces
// as they come (src/routes/chat-completions/tool-calls.ts, BlockBody) rather than all at the close; the
// call, or an unterminated block given back as content, is exactly what the whole text parses to.
import { describe, expect, it } from 'vitest';
import { parseToolCalls, ToolCallParser } from '../src/routes/chat-completions/tool-calls.ts';

/** Pushes `text` in pieces of `pieceChars`; the content and the calls' names and arguments. */
function streamed(text: string, pieceChars: number): { content: string; calls: { name: string; arguments: string }[] } {
  const parser = new ToolCallParser();
  let content = '';
  const calls: { name: string; arguments: string }[] = [];
  for (let at = 0; at < text.length; at += pieceChars) {
    const r = parser.push(text.slice(at, at + pieceChars));
    content += r.content;
    calls.push(...r.calls.map((c) => c.function));
  }
  content += parser.finish().content;
  return { content, calls };
}

describe('long tool-call blocks', () => {
  const data = Array.from({ length: 3000 }, (_, i) => String.fromCharCode(97 + (i % 26))).join('');
  const block = `<tool_call>\n{"name": "store", "arguments": {"data": "${data}"}}\n</tool_call>`;

  it.each([1, 3, 7, 256, 257])('a block of %i-character pieces (hundreds to thousands of them) gives the one call', (pieceChars) => {
    const r = streamed(`before ${block} after`, pieceChars);
    expect(r.content).toBe('before  after');
    expect(r.calls).toEqual([{ name: 'store', arguments: JSON.stringify({ data }) }]);
    expect(r.calls).toEqual(parseToolCalls(`before ${block} after`).calls.map((c) => c.function));
  });

  it('an unterminated long block comes back whole as content', () => {
    const text = `x <tool_call>\n{"name": "store", "arguments": {"data": "${data}`;
    for (const pieceChars of [1, 5, 300]) expect(streamed(text, pieceChars)).toEqual({ content: text, calls: [] });
  });
});
