// GrammarConstraint → what XGrammar compiles (a "recipe"), and the key compiled grammars are cached
// under. Every kind becomes one of two XGrammar inputs:
//
//   regex                                   → compileStructuralTag({format: {type: "regex", pattern}})
//   json_schema, json_object, tagged_json,  → compileGrammar(EBNF, root rule); a schema's EBNF is
//   choice, ebnf                              XGrammar's own (its JSON Schema converter)
//
// Schemas go through EBNF, not compileJSONSchema, to fix one thing in XGrammar 0.1.27's converter:
// a string with minLength/maxLength becomes `"\"" [^"\\\r\n]{0,n} "\""`, which admits raw control
// characters (a tab, \x00) that JSON forbids inside strings (JSON.parse refuses the answer). Those
// classes are narrowed to `[^"\\\0-\x1f]` (jsonSafeStrings; test/structured-grammar.test.ts checks
// that the converter still writes them so).
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

/** The converter's character class of a length-bounded JSON string, and what it must be. */
const BOUNDED_STRING_CHAR = String.raw`[^"\\\r\n]`;
const JSON_STRING_CHAR = String.raw`[^"\\\0-\x1f]`;

/** A schema's EBNF with every length-bounded string limited to the characters JSON allows unescaped. */
export function jsonSafeStrings(ebnf: string): string {
  return ebnf.replaceAll(BOUNDED_STRING_CHAR, JSON_STRING_CHAR);
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

/** The recipe of a constraint; `schemaToEbnf` turns the JSON kinds' schemas into EBNF. */
export async function recipeOf(c: GrammarConstraint, schemaToEbnf: SchemaToEbnf): Promise<GrammarRecipe> {
  switch (c.kind) {
    case 'json_schema':
      return { method: 'ebnf', ebnf: jsonSafeStrings(await schemaToEbnf(c.schema)), rootRule: 'root' };
    case 'json_object':
      return { method: 'ebnf', ebnf: jsonSafeStrings(await schemaToEbnf(OBJECT_SCHEMA)), rootRule: 'root' };
    case 'regex':
      return { method: 'structural_tag', json: JSON.stringify({ type: 'structural_tag', format: { type: 'regex', pattern: c.pattern } }) };
    case 'choice':
      return { method: 'ebnf', ebnf: `root ::= ${c.choices.map(ebnfLiteral).join(' | ')}\n`, rootRule: 'root' };
    case 'ebnf':
      return { method: 'ebnf', ebnf: c.grammar, rootRule: 'root' };
    case 'tagged_json': {
      const schemaEbnf = jsonSafeStrings(await schemaToEbnf(c.schema));
      const repeat = c.multiple ? ` (${ebnfLiteral(c.separator)} ${BLOCK_RULE})*` : '';
      const ebnf = `${schemaEbnf}\n${CALLS_RULE} ::= ${BLOCK_RULE}${repeat}\n${BLOCK_RULE} ::= ${ebnfLiteral(c.begin)} root ${ebnfLiteral(c.end)}\n`;
      return { method: 'ebnf', ebnf, rootRule: CALLS_RULE };
    }
  }
}
