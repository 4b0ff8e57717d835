// Tests of src/routes/chat-template.ts on the official SpikingBrain-7B chat template (tokenizer_config.json
// in the spec directory, read as is). The expected strings were rendered by Python Jinja2 3.1 set up as
// transformers' apply_chat_template (sandboxed, trim_blocks, lstrip_blocks, tojson = json.dumps with
// ensure_ascii=False) — an independent implementation of the same template language.

import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ChatTemplateError, loadChatTemplate, renderChat, selectChatTemplate } from '../src/routes/chat-template.ts';
import { ApiError } from '../src/server/errors.ts';

const SPEC_DIR = resolve(import.meta.dirname, 'fixtures/spikingbrain-7b');
let template: string;

beforeAll(async () => {
  const loaded = await loadChatTemplate(SPEC_DIR);
  if (loaded === null) throw new Error('the official tokenizer_config.json has no chat_template');
  template = loaded;
});

const tokens = { bosToken: '<|im_start|>', eosToken: '<|endoftext|>' };

describe('renderChat with the official SpikingBrain-7B template', () => {
  it('renders system + user + assistant + user with the generation prompt', () => {
    const out = renderChat(template, {
      ...tokens,
      addGenerationPrompt: true,
      messages: [
        { role: 'system', content: 'You are terse.' },
        { role: 'user', content: 'Hi!' },
        { role: 'assistant', content: 'Hello.' },
        { role: 'user', content: '2+2?' },
      ],
    });
    expect(out).toBe("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n");
  });

  it('adds the default system prompt when there is none', () => {
    const out = renderChat(template, { ...tokens, addGenerationPrompt: true, messages: [{ role: 'user', content: 'Hi!' }] });
    expect(out).toBe("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n");
  });

  it('omits the generation prompt when not asked', () => {
    const out = renderChat(template, {
      ...tokens,
      addGenerationPrompt: false,
      messages: [
        { role: 'system', content: 'S' },
        { role: 'user', content: 'a' },
      ],
    });
    expect(out).toBe("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\na<|im_end|>\n");
  });

  it('renders tools, assistant tool calls (arguments sent as a JSON string) and tool results', () => {
    const out = renderChat(template, {
      ...tokens,
      addGenerationPrompt: true,
      tools: [
        {
          type: 'function',
          function: {
            name: 'get_weather',
            description: 'Weather in a city — now',
            parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
          },
        },
      ],
      messages: [
        { role: 'user', content: 'Weather in Paris?' },
        {
          role: 'assistant',
          content: null,
          tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }],
        },
        { role: 'tool', tool_call_id: 'call_1', content: '{"temp_c": 21}' },
        { role: 'tool', tool_call_id: 'call_2', content: 'sunny' },
      ],
    });
    expect(out).toBe("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather in a city — now\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n{\"temp_c\": 21}\n</tool_response>\n<tool_response>\nsunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n");
  });

  it('joins text content parts and rejects other part types with a 400 error', () => {
    const parts = renderChat(template, {
      ...tokens,
      addGenerationPrompt: true,
      messages: [{ role: 'user', content: [{ type: 'text', text: 'Hi' }, { type: 'text', text: '!' }] }],
    });
    expect(parts).toContain('<|im_start|>user\nHi\n!<|im_end|>');
    const image = (): string =>
      renderChat(template, {
        ...tokens,
        addGenerationPrompt: true,
        messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'http://x/y.png' } }] }],
      });
    expect(image).toThrow(ChatTemplateError);
    expect(image).toThrow(/image_url/);
    try {
      image();
    } catch (err) {
      expect(err).toBeInstanceOf(ApiError);
      expect((err as ApiError).status).toBe(400);
      expect((err as ApiError).param).toBe('messages');
    }
  });
});

describe('renderChat in general', () => {
  it('passes chat_template_kwargs and the special-token strings to the template', () => {
    const t = "{{ bos_token }}{% if enable_thinking %}<think>{% endif %}{{ greeting }} {{ messages[0]['content'] }}{{ eos_token }}";
    const out = renderChat(t, {
      ...tokens,
      addGenerationPrompt: false,
      chatTemplateKwargs: { enable_thinking: true, greeting: 'Hey' },
      messages: [{ role: 'user', content: 'you' }],
    });
    expect(out).toBe('<|im_start|><think>Hey you<|endoftext|>');
    expect(() =>
      renderChat(t, { ...tokens, addGenerationPrompt: false, chatTemplateKwargs: { messages: [] }, messages: [] }),
    ).toThrow(ChatTemplateError);
  });

  it('turns template syntax errors and raise_exception into ChatTemplateError', () => {
    const broken = (): string => renderChat('{% if %}', { ...tokens, addGenerationPrompt: false, messages: [] });
    expect(broken).toThrow(ChatTemplateError);
    expect(broken).toThrow(/does not parse/);
    const raising = (): string =>
      renderChat("{{ raise_exception('roles must alternate') }}", { ...tokens, addGenerationPrompt: false, messages: [] });
    expect(raising).toThrow(ChatTemplateError);
    expect(raising).toThrow(/roles must alternate/);
  });

  it('picks the "default" template from a list, and reads chat_template.jinja first', async () => {
    const list = [
      { name: 'tool_use', template: 'T' },
      { name: 'default', template: 'D' },
    ];
    expect(selectChatTemplate(list)).toBe('D');
    expect(selectChatTemplate(list, 'tool_use')).toBe('T');
    expect(selectChatTemplate('plain')).toBe('plain');
    expect(selectChatTemplate(undefined)).toBeNull();
    const dir = await mkdtemp(join(tmpdir(), 'spikeserve-tpl-'));
    try {
      await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify({ chat_template: list }));
      expect(await loadChatTemplate(dir)).toBe('D');
      await writeFile(join(dir, 'chat_template.jinja'), 'J');
      expect(await loadChatTemplate(dir)).toBe('J');
      expect(await loadChatTemplate(join(dir, 'none'))).toBeNull();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
