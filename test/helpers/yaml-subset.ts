// A parser for the small YAML subset that the Helm values files under deploy/ keep to, so the
// deploy tests need no YAML library. Supported: block mappings and block sequences (indented with
// spaces), `- key: value` items, plain / 'single' / "double" quoted scalars, null / booleans /
// numbers as YAML 1.2's core schema reads them, empty `{}` and `[]`, and `#` comments.
// Everything else (anchors, aliases, tags, block scalars `|` `>`, flow collections with content,
// multi-line scalars, several documents, tabs) throws YamlSubsetError with the line number, so a
// values file that leaves the subset fails the tests instead of being misread.

export type YamlValue = null | boolean | number | string | YamlValue[] | { [key: string]: YamlValue };

export class YamlSubsetError extends Error {
  constructor(message: string, readonly lineNumber: number) {
    super(`line ${lineNumber}: ${message}`);
    this.name = 'YamlSubsetError';
  }
}

interface Line {
  readonly number: number; // 1-based, for messages
  readonly indent: number;
  text: string; // content after the indent, comment removed; rewritten in place for `- key: v`
}

export function parseYamlSubset(source: string): YamlValue {
  const lines = tokenize(source);
  if (lines.length === 0) return null;
  const cursor = { index: 0 };
  const first = lines[0] as Line;
  const value = parseBlock(lines, cursor, first.indent);
  const rest = lines[cursor.index];
  if (rest !== undefined) throw new YamlSubsetError('unexpected indentation', rest.number);
  return value;
}

function tokenize(source: string): Line[] {
  const out: Line[] = [];
  source.split(/\r?\n/).forEach((raw, i) => {
    const number = i + 1;
    const indentMatch = /^[ \t]*/.exec(raw);
    const lead = indentMatch?.[0] ?? '';
    if (lead.includes('\t')) throw new YamlSubsetError('tab in indentation', number);
    const text = stripComment(raw.slice(lead.length), number).trimEnd();
    if (text === '') return;
    if (text === '---' || text === '...') {
      if (out.length === 0 && text === '---') return; // a leading document marker is harmless
      throw new YamlSubsetError('several documents are not supported', number);
    }
    out.push({ number, indent: lead.length, text });
  });
  return out;
}

/** Removes a `#` comment: at the start, or after whitespace, outside quotes. */
function stripComment(text: string, lineNumber: number): string {
  let quote: '"' | "'" | null = null;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote === '"') {
      if (c === '\\') i++;
      else if (c === '"') quote = null;
    } else if (quote === "'") {
      if (c === "'") {
        if (text[i + 1] === "'") i++;
        else quote = null;
      }
    } else if (c === '#' && (i === 0 || text[i - 1] === ' ')) {
      return text.slice(0, i);
    } else if ((c === '"' || c === "'") && (i === 0 || /[\s:\-[{,]/.test(text[i - 1] ?? ''))) {
      quote = c;
    }
  }
  if (quote !== null) throw new YamlSubsetError('unterminated quoted scalar', lineNumber);
  return text;
}

function parseBlock(lines: Line[], cursor: { index: number }, indent: number): YamlValue {
  const first = lines[cursor.index] as Line;
  return isSequenceItem(first.text) ? parseSequence(lines, cursor, indent) : parseMapping(lines, cursor, indent);
}

function isSequenceItem(text: string): boolean {
  return text === '-' || text.startsWith('- ');
}

function parseSequence(lines: Line[], cursor: { index: number }, indent: number): YamlValue[] {
  const items: YamlValue[] = [];
  // Ends at the first line that is not an item at this indent: the caller decides whether that
  // line is the next key of the enclosing mapping (`key:` followed by `- item` at the same column)
  // or misplaced.
  for (let line = lines[cursor.index]; line !== undefined && line.indent === indent && isSequenceItem(line.text); line = lines[cursor.index]) {
    if (line.text === '-') {
      cursor.index++;
      const next = lines[cursor.index];
      if (next === undefined || next.indent <= indent) items.push(null);
      else items.push(parseBlock(lines, cursor, next.indent));
      continue;
    }
    const content = line.text.slice(2).trimStart();
    const contentIndent = indent + (line.text.length - content.length);
    if (isSequenceItem(content) || splitKey(content, line.number) !== null) {
      // `- key: value` starts a mapping (or `- - x` a sequence) whose column is after the dash.
      line.text = content;
      (line as { indent: number }).indent = contentIndent;
      items.push(parseBlock(lines, cursor, contentIndent));
    } else {
      items.push(parseScalar(content, line.number));
      cursor.index++;
    }
  }
  return items;
}

function parseMapping(lines: Line[], cursor: { index: number }, indent: number): { [key: string]: YamlValue } {
  const map: { [key: string]: YamlValue } = {};
  for (let line = lines[cursor.index]; line !== undefined && line.indent === indent; line = lines[cursor.index]) {
    const split = splitKey(line.text, line.number);
    if (split === null) throw new YamlSubsetError(`expected "key: value", got "${line.text}"`, line.number);
    const [key, rest] = split;
    if (Object.hasOwn(map, key)) throw new YamlSubsetError(`duplicate key "${key}"`, line.number);
    cursor.index++;
    if (rest !== '') {
      map[key] = parseScalar(rest, line.number);
      continue;
    }
    const next = lines[cursor.index];
    if (next !== undefined && next.indent > indent) map[key] = parseBlock(lines, cursor, next.indent);
    else if (next !== undefined && next.indent === indent && isSequenceItem(next.text)) map[key] = parseSequence(lines, cursor, indent);
    else map[key] = null;
  }
  const stray = lines[cursor.index];
  if (stray !== undefined && stray.indent > indent) throw new YamlSubsetError('unexpected indentation', stray.number);
  return map;
}

/** `key: rest` → [key, rest]; null when the text is not a mapping entry. */
function splitKey(text: string, lineNumber: number): [string, string] | null {
  if (text.startsWith('"') || text.startsWith("'")) {
    const end = closingQuote(text, lineNumber);
    const after = text.slice(end + 1);
    if (!/^:(\s|$)/.test(after)) return null;
    return [parseScalar(text.slice(0, end + 1), lineNumber) as string, after.slice(1).trim()];
  }
  const m = /^([^\s:#?&*!|>{}[\],][^:]*?|[^\s:#?&*!|>{}[\],]):(?:\s+(.*))?$/.exec(text);
  if (m === null) return null;
  return [m[1] as string, (m[2] ?? '').trim()];
}

function closingQuote(text: string, lineNumber: number): number {
  const q = text[0];
  for (let i = 1; i < text.length; i++) {
    if (q === '"' && text[i] === '\\') i++;
    else if (text[i] === q) {
      if (q === "'" && text[i + 1] === "'") i++;
      else return i;
    }
  }
  throw new YamlSubsetError('unterminated quoted scalar', lineNumber);
}

function parseScalar(text: string, lineNumber: number): YamlValue {
  if (text.startsWith('"')) {
    const end = closingQuote(text, lineNumber);
    if (end !== text.length - 1) throw new YamlSubsetError(`text after a quoted scalar: ${text}`, lineNumber);
    try {
      return JSON.parse(text) as string; // YAML's double-quoted escapes are a superset of JSON's
    } catch {
      throw new YamlSubsetError(`unsupported escape in ${text}`, lineNumber);
    }
  }
  if (text.startsWith("'")) {
    const end = closingQuote(text, lineNumber);
    if (end !== text.length - 1) throw new YamlSubsetError(`text after a quoted scalar: ${text}`, lineNumber);
    return text.slice(1, -1).replace(/''/g, "'");
  }
  if (text === '{}') return {};
  if (text === '[]') return [];
  if (/^[&*!|>{[@`%]/.test(text)) {
    throw new YamlSubsetError(`"${text[0]}" (anchor, alias, tag, block scalar or flow collection) is outside the subset`, lineNumber);
  }
  if (/:(\s|$)/.test(text)) throw new YamlSubsetError(`": " inside a plain scalar: ${text}`, lineNumber);
  if (/^(null|Null|NULL|~)$/.test(text)) return null;
  if (/^(true|True|TRUE)$/.test(text)) return true;
  if (/^(false|False|FALSE)$/.test(text)) return false;
  // YAML 1.1 readers (Helm's among them) take these as booleans; refuse the ambiguity.
  if (/^(y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF)$/.test(text)) {
    throw new YamlSubsetError(`"${text}" is a boolean to YAML 1.1 and a string to 1.2: quote it`, lineNumber);
  }
  if (/^[-+]?[0-9]+$/.test(text)) return Number(text);
  if (/^0x[0-9a-fA-F]+$/.test(text)) return Number.parseInt(text.slice(2), 16);
  if (/^0o[0-7]+$/.test(text)) return Number.parseInt(text.slice(2), 8);
  if (/^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$/.test(text)) return Number(text);
  if (/^[-+]?\.(inf|Inf|INF)$/.test(text)) return text.startsWith('-') ? -Infinity : Infinity;
  if (/^\.(nan|NaN|NAN)$/.test(text)) return Number.NaN;
  return text;
}
