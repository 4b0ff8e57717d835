// Tool calls in a chat reply, as the SpikingBrain/Qwen (Hermes-style) chat template asks the model to
// write them:
//
//   <tool_call>
//   {"name": <function-name>, "arguments": <args-json-object>}
//   </tool_call>
//
// or as Qwen3.5's (and Qwen3-Coder's) templates ask for them, in XML inside the same tags:
//
//   <tool_call>
//   <function=get_weather>
//   <parameter=city>
//   Paris
//   </parameter>
//   </function>
//   </tool_call>
//
// (a parameter's value is taken as JSON when it parses as such, else as the string written).
//
// ToolCallParser reads the reply text as it streams and splits it into content (everything outside the
// blocks) and complete calls. Text that may still become an opening tag is held back until it can be
// decided, so a streamed client never sees half a tag. A block whose JSON does not parse, or that names
// no function, is given back as content (nothing is lost); so is an unterminated block at the end.
import { randomBytes } from 'node:crypto';

export const TOOL_CALL_OPEN = '<tool_call>';
export const TOOL_CALL_CLOSE = '</tool_call>';

/** One call as the OpenAI wire format carries it (`arguments` is a JSON string). */
export interface ToolCall {
  readonly id: string;
  readonly type: 'function';
  readonly function: { readonly name: string; readonly arguments: string };
}

export interface ParsedText {
  /** Content text that is final (outside tool-call blocks). */
  readonly content: string;
  /** Calls completed by this piece of text, in order. */
  readonly calls: readonly ToolCall[];
}

/** `call_` + 24 hex digits, unique per call. */
function callId(): string {
  return `call_${randomBytes(12).toString('hex')}`;
}

/** The XML form's call: `<function=NAME>` with `<parameter=KEY>VALUE</parameter>` children; null when it is not that. */
function parseXmlToolCallBody(body: string): ToolCall | null {
  const fn = /^<function=([^>\n]+)>([\s\S]*)<\/function>$/.exec(body);
  if (fn === null) return null;
  const name = (fn[1] ?? '').trim();
  if (name === '') return null;
  const args: Record<string, unknown> = {};
  const param = /<parameter=([^>\n]+)>\n?([\s\S]*?)\n?<\/parameter>/g;
  const inner = fn[2] ?? '';
  let rest = inner;
  for (let m = param.exec(inner); m !== null; m = param.exec(inner)) {
    const raw = m[2] ?? '';
    let value: unknown = raw;
    try {
      value = JSON.parse(raw);
    } catch {
      // a plain string
    }
    args[(m[1] ?? '').trim()] = value;
    rest = rest.replace(m[0], '');
  }
  if (rest.trim() !== '') return null; // text between parameters: not a well-formed call
  return { id: callId(), type: 'function', function: { name, arguments: JSON.stringify(args) } };
}

/**
 * The call in one block's body, or null when it is neither `{"name": string, "arguments"?: object}`
 * nor the XML `<function=…>` form.
 */
export function parseToolCallBody(body: string): ToolCall | null {
  if (body.startsWith('<function=')) return parseXmlToolCallBody(body);
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  const { name, arguments: args, parameters } = value as Record<string, unknown>;
  if (typeof name !== 'string' || name === '') return null;
  const a = args ?? parameters ?? {};
  // Arguments are an object; a model that wrote them as a JSON string is taken at its word.
  const text = typeof a === 'string' ? a : JSON.stringify(a);
  return { id: callId(), type: 'function', function: { name, arguments: text } };
}

/** Length of the longest suffix of `text` that is a proper prefix of `tag`. */
function partialTagSuffix(text: string, tag: string): number {
  for (let n = Math.min(tag.length - 1, text.length); n > 0; n--) {
    if (text.endsWith(tag.slice(0, n))) return n;
  }
  return 0;
}

/**
 * A block's body as it streams in: its pieces, joined every JOIN_PIECES pieces into one part, so closing
 * the block joins a few hundred parts instead of one piece per token (65,536 pieces of 4 characters took
 * ~10 ms to join at once; joined as they come, the work is spread over the pieces).
 */
class BlockBody {
  static readonly JOIN_PIECES = 256;
  private parts: string[] = [];
  private pieces: string[] = [];

  push(piece: string): void {
    this.pieces.push(piece);
    if (this.pieces.length === BlockBody.JOIN_PIECES) {
      this.parts.push(this.pieces.join(''));
      this.pieces = [];
    }
  }

  text(): string {
    return this.parts.join('') + this.pieces.join('');
  }
}

/**
 * Cost is linear in the reply: outside a block only a possible tag start is carried over; inside one the
 * body's pieces are kept (BlockBody) and only the last TOOL_CALL_CLOSE.length − 1 characters are searched
 * again with the next piece (searching one ever-growing string would rescan — and re-flatten — the whole
 * body for every piece: quadratic in a long block).
 */
export class ToolCallParser {
  /** Outside a block: text not yet decided (a possible start of TOOL_CALL_OPEN). */
  private pending = '';
  private inBlock = false;
  /** Inside a block: its body so far, and the last few characters of it (a close tag may straddle pieces). */
  private body = new BlockBody();
  private bodyTail = '';

  /** Feeds the next piece of reply text. */
  push(text: string): ParsedText {
    let content = '';
    const calls: ToolCall[] = [];
    let rest = text;
    for (;;) {
      if (!this.inBlock) {
        const window = this.pending + rest;
        const open = window.indexOf(TOOL_CALL_OPEN);
        if (open < 0) {
          const keep = partialTagSuffix(window, TOOL_CALL_OPEN);
          content += window.slice(0, window.length - keep);
          this.pending = window.slice(window.length - keep);
          break;
        }
        content += window.slice(0, open);
        this.pending = '';
        rest = window.slice(open + TOOL_CALL_OPEN.length);
        this.inBlock = true;
        this.body = new BlockBody();
        this.bodyTail = '';
      } else {
        const window = this.bodyTail + rest;
        const close = window.indexOf(TOOL_CALL_CLOSE);
        if (close < 0) {
          this.body.push(rest);
          this.bodyTail = window.slice(-(TOOL_CALL_CLOSE.length - 1));
          break;
        }
        // The tag starts `close − bodyTail.length` characters into `rest` (before it, when negative).
        const cutAt = close - this.bodyTail.length;
        let body = this.body.text();
        body = cutAt >= 0 ? body + rest.slice(0, cutAt) : body.slice(0, body.length + cutAt);
        rest = rest.slice(cutAt + TOOL_CALL_CLOSE.length);
        this.inBlock = false;
        this.body = new BlockBody();
        this.bodyTail = '';
        const call = parseToolCallBody(body.trim());
        if (call === null) content += `${TOOL_CALL_OPEN}${body}${TOOL_CALL_CLOSE}`;
        else calls.push(call);
      }
    }
    return { content, calls };
  }

  /** End of the reply: whatever is still held back is content (an unterminated block is kept as written). */
  finish(): ParsedText {
    const content = this.inBlock ? `${TOOL_CALL_OPEN}${this.body.text()}` : this.pending;
    this.pending = '';
    this.inBlock = false;
    this.body = new BlockBody();
    this.bodyTail = '';
    return { content, calls: [] };
  }
}

/** Splits a whole reply: content outside the blocks (trimmed; null when empty and there were calls) and the calls. */
export function parseToolCalls(text: string): { content: string | null; calls: ToolCall[] } {
  const parser = new ToolCallParser();
  const a = parser.push(text);
  const b = parser.finish();
  const calls = [...a.calls, ...b.calls];
  const content = a.content + b.content;
  if (calls.length === 0) return { content, calls };
  const trimmed = content.trim();
  return { content: trimmed === '' ? null : trimmed, calls };
}
