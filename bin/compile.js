// Compiles src/ (TypeScript) to JavaScript for bin/spikeserve.js: one .js file per .ts file under
// .cache/js/<hash>/, in src/'s layout, with relative imports rewritten from .ts to .js and packages
// left as imports (esbuild; types are only stripped: `npm run typecheck` checks them), plus src/'s
// other files (the chat page). <hash> covers every file under src/, this recipe and the compiler's
// version, so an edited tree gets a fresh copy and an unchanged one is reused as it is. A build
// writes a temporary folder and renames it into place, so concurrent starts never see half a copy.
//
// Why: TypeScript run through tsx costs ~30 MiB in every thread that loads it (its loader thread and
// compiler): ~90 MiB of the server's resident memory with the engine worker (bench/README.md, "Memory").
//
//   node bin/compile.js          compiles (if needed) and prints the folder
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const PACKAGE_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
/** Bump when the build options below change. */
const RECIPE = 1;
/** Written last into a finished copy. */
const DONE_FILE = '.complete';
/** Compiled copies kept (the newest): a server started earlier may still load files from its own. */
const KEEP = 3;

/** Every file under `dir`, sorted. */
function filesUnder(dir) {
  const out = [];
  for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...filesUnder(path));
    else if (entry.isFile()) out.push(path);
  }
  return out;
}

function esbuildVersion() {
  const require = createRequire(join(PACKAGE_ROOT, 'package.json'));
  return JSON.parse(readFileSync(require.resolve('esbuild/package.json'), 'utf8')).version;
}

/** The folder of the compiled copy of the current src/ (which may not exist yet). */
export function compiledDir() {
  const hash = createHash('sha256').update(`recipe ${RECIPE}, esbuild ${esbuildVersion()}\n`);
  for (const file of filesUnder(join(PACKAGE_ROOT, 'src'))) hash.update(`${relative(PACKAGE_ROOT, file)}\0`).update(readFileSync(file));
  return join(PACKAGE_ROOT, '.cache', 'js', hash.digest('hex').slice(0, 16));
}

/** `import './x.ts'` stays an import, of './x.js' (the file compiled beside it). */
const relativeImportsAsJs = {
  name: 'relative-imports-as-js',
  setup(build) {
    build.onResolve({ filter: /^\.\.?\// }, (args) => (args.kind === 'entry-point' ? undefined : { path: args.path.replace(/\.ts$/, '.js'), external: true }));
  },
};

/** Builds the compiled copy into `dir` (compiledDir()) unless it is there. */
export async function compile(dir) {
  if (existsSync(join(dir, DONE_FILE))) return;
  const { build } = await import('esbuild');
  const src = join(PACKAGE_ROOT, 'src');
  const files = filesUnder(src);
  mkdirSync(dirname(dir), { recursive: true });
  const tmp = `${dir}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  try {
    await build({
      entryPoints: files.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts')),
      outbase: src,
      outdir: tmp,
      bundle: true, // only so that the plugin sees every import; each file stays its own module
      packages: 'external',
      plugins: [relativeImportsAsJs],
      format: 'esm',
      platform: 'node',
      target: 'node20',
      sourcemap: true,
      logLevel: 'warning',
    });
    for (const f of files.filter((f) => !f.endsWith('.ts'))) cpSync(f, join(tmp, relative(src, f)));
    writeFileSync(join(tmp, DONE_FILE), '');
    try {
      renameSync(tmp, dir);
    } catch (err) {
      if (!existsSync(join(dir, DONE_FILE))) throw err; // another start finished the same copy first
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  prune(dirname(dir), dir);
}

/** Removes compiled copies beyond the KEEP newest (never `current`, never a build in progress). */
function prune(parent, current) {
  const copies = readdirSync(parent)
    .filter((name) => !name.includes('.tmp-') && join(parent, name) !== current)
    .map((name) => ({ path: join(parent, name), mtimeMs: statSync(join(parent, name)).mtimeMs }))
    .sort((a, b) => b.mtimeMs - a.mtimeMs);
  for (const old of copies.slice(KEEP - 1)) rmSync(old.path, { recursive: true, force: true });
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const dir = compiledDir();
  await compile(dir);
  process.stdout.write(`${dir}\n`);
}
