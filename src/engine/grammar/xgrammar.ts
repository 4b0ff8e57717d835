// Loads XGrammar (@mlc-ai/web-xgrammar, the WASM build of the engine vLLM and SGLang use) and names
// the part of its API the grammar worker calls.
//
// The package ships one UMD bundle under `"type": "module"`. Imported as ESM it finds no `exports`,
// `require` or `__filename` and would only work with those set as globals. So it is loaded as what
// it is, a CommonJS script: a fresh `Module` compiles the file's text with Node's own CommonJS
// wrapper (real `exports`, `require`, `__filename`; dynamic `import()` works, as in any .cjs file).
// Each call gives a new, independent WASM instance, which matters because XGrammar's WASM build
// reports an invalid grammar by printing the reason and aborting (see grammar-worker.ts).
import Module, { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { dirname } from 'node:path';

/** A WASM object that must be freed explicitly. */
export interface Disposable {
  dispose(): void;
}

export interface XgTokenizerInfo extends Disposable {
  getVocabSize(): number;
}

export type XgCompiledGrammar = Disposable;

export type XgGrammar = Disposable;

export interface XgGrammarCompiler extends Disposable {
  compileJSONSchema(schema: string, anyWhitespace?: boolean, indent?: number, separators?: [string, string], strictMode?: boolean, maxWhitespaceCnt?: number): Promise<XgCompiledGrammar>;
  compileBuiltinJSONGrammar(): Promise<XgCompiledGrammar>;
  compileGrammar(ebnf: string, rootRule?: string): Promise<XgCompiledGrammar>;
  compileStructuralTag(structuralTag: string): Promise<XgCompiledGrammar>;
}

export interface XgGrammarMatcher extends Disposable {
  acceptToken(tokenId: number): boolean;
  getNextTokenBitmask(): Promise<Int32Array>;
  isTerminated(): boolean;
}

/** The classes of one XGrammar instance (the subset used here). */
export interface XGrammar {
  readonly TokenizerInfo: {
    createTokenizerInfo(encodedVocab: string[], vocabType: 'byte_level', prependSpace: boolean, vocabSize: number, stopTokenIds: number[]): Promise<XgTokenizerInfo>;
  };
  readonly GrammarCompiler: {
    createGrammarCompiler(info: XgTokenizerInfo, cacheEnabled: boolean): Promise<XgGrammarCompiler>;
  };
  readonly GrammarMatcher: {
    createGrammarMatcher(grammar: XgCompiledGrammar, overrideStopTokens?: number[], terminateWithoutStopToken?: boolean): Promise<XgGrammarMatcher>;
  };
  readonly Grammar: {
    fromJSONSchema(schema: string, anyWhitespace?: boolean, indent?: number, separators?: [string, string], strictMode?: boolean): Promise<XgGrammar>;
    builtinJSONGrammar(): Promise<XgGrammar>;
    fromEBNF(ebnf: string, rootRule?: string): Promise<XgGrammar>;
    fromStructuralTag(structuralTag: string): Promise<XgGrammar>;
  };
  readonly Testings: {
    /** The EBNF XGrammar builds for a JSON Schema (root rule `root`); used to embed a schema in a larger grammar. */
    _jsonSchemaToEBNF(schema: string, anyWhitespace: boolean, indent: number, separators: [string, string], strictMode: boolean): Promise<string>;
  };
}

/** Node's CommonJS Module, with the two members used to load a file the way `require` does. */
interface CommonJsModule {
  filename: string;
  paths: string[];
  exports: unknown;
  _compile(source: string, filename: string): void;
}
type CommonJsModuleClass = (new (id: string) => CommonJsModule) & { _nodeModulePaths(dir: string): string[] };

const BUNDLE = createRequire(import.meta.url).resolve('@mlc-ai/web-xgrammar');

/** A new XGrammar instance (its WASM module starts on the first call into it). */
export function loadXGrammar(): XGrammar {
  const ModuleClass = Module as unknown as CommonJsModuleClass;
  const mod = new ModuleClass(BUNDLE);
  mod.filename = BUNDLE;
  mod.paths = ModuleClass._nodeModulePaths(dirname(BUNDLE));
  mod._compile(readFileSync(BUNDLE, 'utf8'), BUNDLE);
  return mod.exports as XGrammar;
}
