// Test helper: a servable tiny Qwen3.5 checkpoint (random weights, both layouts) with a byte-level BPE
// tokenizer (256 byte tokens, then ChatML, reasoning and tool-call specials) and a reasoning chat
// template. The template is written here for the tests after the documented behaviour of Qwen's
// thinking templates (the prompt ends inside `<think>\n` unless `enable_thinking` is false, which
// closes an empty block); it is not the official Qwen3.5 file.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeRandomTinyCheckpoint, type TinyCheckpoint, type TinyCheckpointOptions } from './checkpoint-writer.ts';
import { byteAlphabet } from './server.ts';

export const QWEN3_5_TEST_SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<think>', '</think>', '<tool_call>', '</tool_call>'];
/** Token id of a special: bytes take 0…255. */
export const specialId = (token: string): number => 256 + QWEN3_5_TEST_SPECIALS.indexOf(token);

export const QWEN3_5_TEST_TEMPLATE =
  "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endfor %}" +
  "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}" +
  "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- else %}{{- '<think>\\n' }}{%- endif %}" +
  '{%- endif %}';

/** Writes the checkpoint (vocab 272) and its tokenizer files into `dir`. */
export function makeQwen3_5TestModel(dir: string, opts: TinyCheckpointOptions = {}): TinyCheckpoint {
  mkdirSync(dir, { recursive: true });
  const ckpt = makeRandomTinyCheckpoint(dir, { modelType: 'qwen3_5', vocabSize: 272, seed: 5, ...opts });
  const vocab: Record<string, number> = {};
  byteAlphabet().forEach((ch, id) => (vocab[ch] = id));
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };
  // <think> and </think> are not special in Qwen's tokenizers: they stay in decoded text.
  const added = QWEN3_5_TEST_SPECIALS.map((content, i) => ({
    id: 256 + i, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: !content.includes('think') && !content.includes('tool_call'),
  }));
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify({
    version: '1.0', truncation: null, padding: null, added_tokens: added, normalizer: null, pre_tokenizer: byteLevel, post_processor: null, decoder: byteLevel,
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false, byte_fallback: false, vocab, merges: [] },
  }));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ eos_token: '<|im_end|>', pad_token: '<|endoftext|>', chat_template: QWEN3_5_TEST_TEMPLATE, added_tokens_decoder: {} }));
  writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: [specialId('<|im_end|>'), specialId('<|endoftext|>')] }));
  return ckpt;
}
