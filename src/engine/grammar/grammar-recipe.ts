// GrammarConstraint → what XGrammar compiles (a "recipe"), and the key compiled grammars are cached
// under. Every kind becomes one of three XGrammar inputs:
//
//   json_schema, json_object → compileJSONSchema(schema, compact one-line JSON, strict)
//   regex                    → compileStructuralTag({format: {type: "regex", pattern}})
//   choice, ebnf, tagged_json → compileGrammar(EBNF, root rule)
//
// JSON is compact and on one line (`{"a": 1, "b": [2, 3]}`: separators ", " and ": ", no other
// whitespace): a small model given "any whitespace" can spend its whole max_tokens on newlines. Strict
// mode forbids properties and items the schema does not name, so every answer validates whether or
// not the schema says `additionalProperties: false`.
//
// tagged_json (tool calls) wraps the schema's grammar in the blocks the chat template asks for:
//   spikeserve_calls ::= spikeserve_block (separator spikeserve_block)*   (or one block)
//   spikeserve_block ::= begin root end          (root: the schema's own EBNF, from XGrammar)
import type { GrammarConstraint } from '../types.ts';

/** JSON formatting of every schema grammar: one line, ", " and ": " separators. */
export const JSON_ONE_LINE_INDENT = -1;
export const JSON_SEPARATORS: [string, string] = [', ', ': '];

export type GrammarRecipe =
  | { readonly method: 'json_schema'; readonly schema: string }
  | { readonly method: 'structural_tag'; readonly json: string }
  | { readonly method: 'ebnf'; readonly ebnf: string; readonly rootRule: string };

/** The schema's EBNF (root rule `root`), as XGrammar's converter writes it; throws when it cannot. */
export type SchemaToEbnf = (schema: string) => Promise<string>;

const OBJECT_SCHEMA = '{"type": "object"}';
const CALLS_RULE = 'spikeserve_calls';
const BLOCK_RULE = 'spikeserve_block';

/** Cache key: the kind and everything that shapes the grammar. */
export function constraintKey(c: GrammarConstraint): string {
  switch (c.kind) {
    case 'json_schema':
      return `json_schema\0${c.schema}`;
    case 'json_object':
      return 'json_object';
    case 'regex':
      return `regex\0${c.pattern}`;
    case 'choice':
      return `choice\0${JSON.stringify(c.choices)}`;
    case 'ebnf':
      return `ebnf\0${c.grammar}`;
    case 'tagged_json':
      return `tagged_json\0${JSON.stringify([c.begin, c.end, c.separator, c.multiple])}\0${c.schema}`;
  }
}

/** A string literal of XGrammar's EBNF: `"…"` with `\"`, `\\` and control characters as `\xHH`. */
export function ebnfLiteral(text: string): string {
  let out = '"';
  for (const ch of text) {
    const code = ch.codePointAt(0) as number;
    if (ch === '"' || ch === '\\') out += `\\${ch}`;
    else if (code < 0x20 || code === 0x7f) out += `\\x${code.toString(16).padStart(2, '0')}`;
    else out += ch;
  }
  return `${out}"`;
}

/** The recipe of a constraint; `schemaToEbnf` is only called for tagged_json. */
export async function recipeOf(c: GrammarConstraint, schemaToEbnf: SchemaToEbnf): Promise<GrammarRecipe> {
  switch (c.kind) {
    case 'json_schema':
      return { method: 'json_schema', schema: c.schema };
    case 'json_object':
      return { method: 'json_schema', schema: OBJECT_SCHEMA };
    case 'regex':
      return { method: 'structural_tag', json: JSON.stringify({ type: 'structural_tag', format: { type: 'regex', pattern: c.pattern } }) };
    case 'choice':
      return { method: 'ebnf', ebnf: `root ::= ${c.choices.map(ebnfLiteral).join(' | ')}\n`, rootRule: 'root' };
    case 'ebnf':
      return { method: 'ebnf', ebnf: c.grammar, rootRule: 'root' };
    case 'tagged_json': {
      const schemaEbnf = await schemaToEbnf(c.schema);
      const repeat = c.multiple ? ` (${ebnfLiteral(c.separator)} ${BLOCK_RULE})*` : '';
      const ebnf = `${schemaEbnf}\n${CALLS_RULE} ::= ${BLOCK_RULE}${repeat}\n${BLOCK_RULE} ::= ${ebnfLiteral(c.begin)} root ${ebnfLiteral(c.end)}\n`;
      return { method: 'ebnf', ebnf, rootRule: CALLS_RULE };
    }
  }
}
