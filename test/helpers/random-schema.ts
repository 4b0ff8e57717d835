// Seeded random JSON Schemas of the shapes structured outputs must handle: nested objects (every
// property required, no others), arrays with minItems/maxItems, string enums, bounded integers,
// strings with maxLength, booleans. Every schema is bounded, so an answer always fits in a few
// hundred tokens; each is valid in OpenAI's strict mode.

/** mulberry32: a 32-bit seeded PRNG, uniform in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const WORDS = ['red', 'green', 'blue', 'north', 'south', 'alpha', 'beta', 'small', 'large', 'yes', 'no', 'maybe'];
const NAMES = ['id', 'name', 'count', 'tags', 'kind', 'size', 'items', 'ok', 'level', 'label', 'score', 'parts'];

export type JsonSchema = Record<string, unknown>;

export function randomSchema(seed: number): JsonSchema {
  const rand = seededRandom(seed);
  const int = (lo: number, hi: number): number => lo + Math.floor(rand() * (hi - lo + 1));
  const pick = <T>(xs: readonly T[]): T => xs[int(0, xs.length - 1)] as T;

  const leaf = (): JsonSchema => {
    switch (int(0, 3)) {
      case 0: {
        const n = int(2, 4);
        return { type: 'string', enum: [...new Set(Array.from({ length: n }, () => pick(WORDS)))] };
      }
      case 1: {
        const minimum = int(-50, 50);
        return { type: 'integer', minimum, maximum: minimum + int(0, 100) };
      }
      case 2:
        return { type: 'string', maxLength: int(1, 12) };
      default:
        return { type: 'boolean' };
    }
  };
  const node = (depth: number): JsonSchema => {
    const r = rand();
    if (depth < 2 && r < 0.3) return object(depth + 1);
    if (depth < 3 && r < 0.5) {
      const minItems = int(0, 2);
      return { type: 'array', items: depth < 2 && rand() < 0.3 ? object(depth + 1) : leaf(), minItems, maxItems: minItems + int(0, 2) };
    }
    return leaf();
  };
  const object = (depth: number): JsonSchema => {
    const names = [...new Set(Array.from({ length: int(1, 4) }, () => pick(NAMES)))];
    const properties: JsonSchema = {};
    for (const name of names) properties[name] = node(depth);
    return { type: 'object', properties, required: names, additionalProperties: false };
  };
  return object(0);
}
