// Layering of src/: imports run main → routes → server → engine → cache, never back up (DESIGN.md §1;
// src/main/ is the composition root above them all). Every import of every file under src/ is read
// with TypeScript's own pre-processor (static, `export … from`, `import type`, dynamic import()), and
// a relative import into a higher layer, or a file outside the known layers, is an error. The
// engine and the cache also never import Fastify.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

/** Lower rank = lower layer; a file may import its own layer and those below it. */
const LAYER_RANK: Readonly<Record<string, number>> = { cache: 0, engine: 1, server: 2, routes: 3, main: 4 };
const HTTP_PACKAGE = /^(fastify|fastify-plugin|@fastify\/)/;

/** The layer of a path relative to src/ (`server/app.ts` → `server`), or undefined outside them. */
function layerOf(pathInSrc: string): string | undefined {
  const [top, ...rest] = pathInSrc.split('/');
  return top !== undefined && rest.length > 0 && top in LAYER_RANK ? top : undefined;
}

/** Errors for a set of files given as (path relative to src/, with `/`) → source text. */
export function layeringErrors(files: ReadonlyMap<string, string>): string[] {
  const errors: string[] = [];
  for (const [file, source] of files) {
    const layer = layerOf(file);
    if (layer === undefined) {
      errors.push(`${file}: not inside a layer folder (${Object.keys(LAYER_RANK).join(', ')})`);
      continue;
    }
    for (const { fileName: specifier } of ts.preProcessFile(source, true, true).importedFiles) {
      if (!specifier.startsWith('.')) {
        if (LAYER_RANK[layer]! <= LAYER_RANK['engine']! && HTTP_PACKAGE.test(specifier)) {
          errors.push(`${file}: ${layer}/ imports ${specifier}`);
        }
        continue;
      }
      const target = resolve('/src', dirname(file), specifier);
      if (!target.startsWith(`/src${sep}`)) continue; // e.g. package.json beside src/
      const targetLayer = layerOf(relative('/src', target).split(sep).join('/'));
      if (targetLayer === undefined) continue; // reported when that file itself is checked
      if (LAYER_RANK[targetLayer]! > LAYER_RANK[layer]!) {
        errors.push(`${file}: ${layer}/ imports ${specifier} from the higher layer ${targetLayer}/`);
      }
    }
  }
  return errors;
}

function readSourceTree(root: string): Map<string, string> {
  const files = new Map<string, string>();
  for (const entry of readdirSync(root, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile() || !/\.(ts|js|mjs|cjs)$/.test(entry.name)) continue;
    const path = join(entry.parentPath, entry.name);
    files.set(relative(root, path).split(sep).join('/'), readFileSync(path, 'utf8'));
  }
  return files;
}

describe('layering', () => {
  it('no file under src/ imports a higher layer', () => {
    const files = readSourceTree(join(import.meta.dirname, '..', 'src'));
    expect(files.size).toBeGreaterThan(50);
    expect(layeringErrors(files)).toEqual([]);
  });

  it('the checker finds upward imports in every form, and files outside the layers', () => {
    const bad = new Map([
      ['server/app.ts', "import { registerRoutes } from '../routes/index.ts';"],
      ['server/ok.ts', "import { Engine } from '../engine/engine.ts';\nimport { x } from './y.ts';"],
      ['engine/a.ts', "import type { ApiError } from '../server/errors.ts';"],
      ['engine/b.ts', "export { thing } from '../server/thing.ts';\nimport Fastify from 'fastify';"],
      ['cache/c.ts', "const m = await import('../engine/types.ts');"],
      ['cache/d.ts', "import {\n  A,\n  B,\n} from '../main/cli.ts';"],
      ['routes/ok.ts', "import { buildApp } from '../server/app.ts';\nimport fp from 'fastify-plugin';"],
      ['stray.ts', "export const x = 1;"],
    ]);
    expect(layeringErrors(bad)).toEqual([
      'server/app.ts: server/ imports ../routes/index.ts from the higher layer routes/',
      'engine/a.ts: engine/ imports ../server/errors.ts from the higher layer server/',
      'engine/b.ts: engine/ imports ../server/thing.ts from the higher layer server/',
      'engine/b.ts: engine/ imports fastify',
      'cache/c.ts: cache/ imports ../engine/types.ts from the higher layer engine/',
      'cache/d.ts: cache/ imports ../main/cli.ts from the higher layer main/',
      'stray.ts: not inside a layer folder (cache, engine, server, routes, main)',
    ]);
  });
});
