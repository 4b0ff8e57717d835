// Qwen3.5's tool-call format (the XML <function=…><parameter=…> body inside <tool_call> tags, as its
// chat template asks for it), whole and streamed through the same parser as the JSON form.
import { describe, expect, it } from 'vitest';
import { parseToolCalls, ToolCallParser } from '../src/routes/chat-completions/tool-calls.ts';

const CALL = '<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n<parameter=options>\n{"unit": "celsius"}\n</parameter>\n</function>\n</tool_call>';

describe('Qwen3.5 XML tool calls', () => {
  it('parses name and parameters (JSON values typed, other values strings)', () => {
    const { content, calls } = parseToolCalls(`I will check.\n${CALL}`);
    expect(content).toBe('I will check.');
    expect(calls).toHaveLength(1);
    expect(calls[0]?.function.name).toBe('get_weather');
    expect(JSON.parse(calls[0]?.function.arguments ?? '')).toEqual({ city: 'Paris', days: 3, options: { unit: 'celsius' } });
  });

  it('a function without parameters has empty arguments; a malformed body stays content', () => {
    expect(JSON.parse(parseToolCalls('<tool_call>\n<function=now>\n</function>\n</tool_call>').calls[0]?.function.arguments ?? '')).toEqual({});
    const bad = '<tool_call>\n<function=f>\nstray text\n</function>\n</tool_call>';
    expect(parseToolCalls(bad)).toEqual({ content: bad, calls: [] });
  });

  it('streamed in pieces of every size gives the same call and never half a tag', () => {
    for (const size of [1, 3, 8, 50]) {
      const parser = new ToolCallParser();
      let content = '';
      const names: string[] = [];
      const text = `Sure. ${CALL}`;
      for (let i = 0; i < text.length; i += size) {
        const out = parser.push(text.slice(i, i + size));
        content += out.content;
        names.push(...out.calls.map((c) => c.function.name));
      }
      content += parser.finish().content;
      expect(names).toEqual(['get_weather']);
      expect(content).toBe('Sure. ');
    }
  });
});
