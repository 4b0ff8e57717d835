// The grammar worker (worker_threads entry, started by the inference worker on the first constrained
// request): owns XGrammar — the vocabulary's TokenizerInfo, the compiler with its cache, and one
// GrammarMatcher per constrained request — so that compiling (0.1–3 s for a schema) never runs on the
// step loop, and each next-token mask is computed here while the inference worker runs the model.
// Protocol and shared-memory layout: grammar-protocol.ts.
//
// XGrammar's WASM build reports a bad grammar by printing "[FATAL] file:line: reason" and aborting
// the WASM instance (a RuntimeError "Aborted()"), which may leave it in a broken state. So every
// constraint is first turned into a grammar by a separate *checker* instance, which is thrown away and
// replaced when it aborts; the printed reason becomes the 400's message. Only checked grammars reach
// the compiler instance that holds the matchers.
import { parentPort, workerData } from 'node:worker_threads';
import { TextTokenizer } from '../tokenizer.ts';
import { CompiledCache } from './compiled-cache.ts';
import { constraintKey, JSON_ONE_LINE_INDENT, JSON_SEPARATORS, recipeOf, type GrammarRecipe } from './grammar-recipe.ts';
import {
  CONTROL_COMPILING,
  CONTROL_MATCHERS,
  CONTROL_PROGRESS,
  MATCHER_MASK,
  MATCHER_SEQ,
  MATCHER_STATUS,
  STATUS_COMPLETE,
  STATUS_FAILED,
  STATUS_READY,
  type FromGrammarWorker,
  type GrammarWorkerInit,
  type ToGrammarWorker,
} from './grammar-protocol.ts';
import { encodedVocabulary } from './vocabulary.ts';
import { loadXGrammar, type XGrammar, type XgCompiledGrammar, type XgGrammarCompiler, type XgGrammarMatcher } from './xgrammar.ts';

const port = parentPort;
if (port === null) throw new Error('grammar-worker.ts must run in a worker thread');
const init = workerData as GrammarWorkerInit;
const control = new Int32Array(init.control);

function post(msg: FromGrammarWorker): void {
  port!.postMessage(msg);
}

// XGrammar prints through console.error (bound when an instance starts): keep the last fatal report
// as the reason of the abort that follows it; pass warnings to the log.
let fatalLines: string[] | null = null;
console.error = (...args: unknown[]): void => {
  const text = args.map(String).join(' ');
  if (text.startsWith('[FATAL]')) fatalLines = [text];
  else if (fatalLines !== null && !text.startsWith('Aborted(')) fatalLines.push(text);
  else if (!text.startsWith('Aborted(')) post({ type: 'log', message: `xgrammar: ${text}` });
};

/** "[FATAL] /path/x.cc:12: Check failed: (a) is false: reason" → "reason" (at most 500 chars). */
function abortReason(err: unknown): string {
  const printed = fatalLines?.join('\n');
  fatalLines = null;
  let reason = printed ?? (err instanceof Error ? err.message : String(err));
  reason = reason.replace(/^\[FATAL\] \S+:\d+: /, '');
  const check = reason.indexOf(') is false: ');
  if (reason.startsWith('Check failed: (') && check >= 0) reason = reason.slice(check + ') is false: '.length);
  return reason.length > 500 ? `${reason.slice(0, 500)}…` : reason;
}

interface LiveMatcher {
  readonly matcher: XgGrammarMatcher;
  readonly shared: Int32Array;
  numAccepted: number;
}

let checker: XGrammar = loadXGrammar();
let compiler: XgGrammarCompiler;
let cache: CompiledCache<XgCompiledGrammar>;
const matchers = new Map<number, LiveMatcher>();

function bumpProgress(): void {
  Atomics.add(control, CONTROL_PROGRESS, 1);
  Atomics.notify(control, CONTROL_PROGRESS);
}

/** Runs grammar work with COMPILING set, so the step loop does not wait for masks meanwhile. */
async function busy<T>(work: () => Promise<T>): Promise<T> {
  Atomics.add(control, CONTROL_COMPILING, 1);
  bumpProgress();
  try {
    return await work();
  } finally {
    Atomics.sub(control, CONTROL_COMPILING, 1);
    bumpProgress();
  }
}

/** The recipe of a constraint, built (and so checked) by the checker instance; throws the reason. */
async function checkedRecipe(msg: Extract<ToGrammarWorker, { type: 'open' }>): Promise<GrammarRecipe> {
  try {
    const recipe = await recipeOf(msg.constraint, (schema) => checker.Testings._jsonSchemaToEBNF(schema, false, JSON_ONE_LINE_INDENT, JSON_SEPARATORS, true));
    const g = await (recipe.method === 'structural_tag' ? checker.Grammar.fromStructuralTag(recipe.json) : checker.Grammar.fromEBNF(recipe.ebnf, recipe.rootRule));
    g.dispose();
    return recipe;
  } catch (err) {
    const reason = abortReason(err);
    checker = loadXGrammar(); // the aborted instance is not trusted again
    throw new Error(reason);
  }
}

function compile(recipe: GrammarRecipe): Promise<XgCompiledGrammar> {
  switch (recipe.method) {
    case 'structural_tag':
      return compiler.compileStructuralTag(recipe.json);
    case 'ebnf':
      return compiler.compileGrammar(recipe.ebnf, recipe.rootRule);
  }
}

/** Computes the mask after the tokens accepted so far (or the end state) into the shared area. */
async function publish(live: LiveMatcher): Promise<void> {
  const { matcher, shared } = live;
  let status = STATUS_READY;
  if (matcher.isTerminated()) status = STATUS_COMPLETE;
  else {
    const mask = await matcher.getNextTokenBitmask();
    shared.set(mask, MATCHER_MASK);
    if (!mask.some((word) => word !== 0)) status = STATUS_FAILED; // no token can continue the text
  }
  shared[MATCHER_STATUS] = status;
  Atomics.store(shared, MATCHER_SEQ, live.numAccepted);
  bumpProgress();
}

async function open(msg: Extract<ToGrammarWorker, { type: 'open' }>): Promise<void> {
  const started = performance.now();
  let grammar: XgCompiledGrammar;
  let cached: boolean;
  try {
    const key = constraintKey(msg.constraint);
    // Only a miss is flagged as busy: a hit must not hold the running streams' masks.
    ({ grammar, cached } = await cache.get(key, () => busy(async () => compile(await checkedRecipe(msg)))));
  } catch (err) {
    post({ type: 'open_failed', id: msg.id, message: err instanceof Error ? err.message : String(err) });
    return;
  }
  // No stop id (ignore_eos without stop_token_ids): the matcher ends as soon as the grammar is complete.
  const stops = msg.stopTokenIds.length > 0 ? [...msg.stopTokenIds] : undefined;
  const matcher = await xgrammar.GrammarMatcher.createGrammarMatcher(grammar, stops, stops === undefined);
  const live: LiveMatcher = { matcher, shared: new Int32Array(msg.shared), numAccepted: 0 };
  matchers.set(msg.id, live);
  Atomics.store(control, CONTROL_MATCHERS, matchers.size);
  await publish(live);
  post({ type: 'opened', id: msg.id, compileMs: performance.now() - started, cached });
}

async function accept(id: number, tokenId: number): Promise<void> {
  const live = matchers.get(id);
  if (live === undefined) return;
  live.numAccepted++;
  if (!live.matcher.acceptToken(tokenId)) {
    live.shared[MATCHER_STATUS] = STATUS_FAILED;
    Atomics.store(live.shared, MATCHER_SEQ, live.numAccepted);
    bumpProgress();
    return;
  }
  await publish(live);
}

function close(id: number): void {
  const live = matchers.get(id);
  if (live === undefined) return; // its open failed
  live.matcher.dispose();
  matchers.delete(id);
  Atomics.store(control, CONTROL_MATCHERS, matchers.size);
}

let xgrammar: XGrammar;

try {
  const tokenizer = await TextTokenizer.load(init.modelDir);
  xgrammar = loadXGrammar();
  const vocab = encodedVocabulary(tokenizer, init.vocabSize, init.eosTokenIds);
  const info = await xgrammar.TokenizerInfo.createTokenizerInfo(vocab, 'byte_level', false, init.vocabSize, [...init.eosTokenIds]);
  compiler = await xgrammar.GrammarCompiler.createGrammarCompiler(info, false);
  cache = new CompiledCache(init.cacheEntries);
  await tokenizer.close();
} catch (err) {
  post({ type: 'init_failed', message: `cannot prepare the vocabulary for grammars: ${err instanceof Error ? err.message : String(err)}` });
  throw err;
}

// Messages are handled one at a time, in order: an accept or close never overtakes the open of its
// matcher (a close for an open that failed finds nothing).
let queue: Promise<void> = Promise.resolve();
port.on('message', (msg: ToGrammarWorker) => {
  queue = queue.then(async () => {
    switch (msg.type) {
      case 'open':
        return open(msg);
      case 'accept':
        for (let i = 0; i < msg.accepted.length; i += 2) await accept(msg.accepted[i]!, msg.accepted[i + 1]!);
        return;
      case 'close':
        return close(msg.id);
    }
  }).catch((err: unknown) => post({ type: 'log', message: `grammar worker: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}` }));
});
