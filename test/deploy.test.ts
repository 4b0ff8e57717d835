// Static checks of the deployment files: Dockerfile, Helm chart, Grafana dashboard.
// YAML is read with the yaml package, PromQL with Prometheus's grammar (@prometheus-io/lezer-promql).
// No docker, helm or Prometheus binary is needed: each check is a pure function over file text
// that returns a list of problems, run once on the real files (expect none) and once on a
// deliberately broken sample (expect the problem to be found), so a checker that can never fail
// is itself caught.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parser as promqlParser } from '@prometheus-io/lezer-promql';
import { parse as parseYaml } from 'yaml';
import { FLAGS, envName } from '../src/server/config.ts';
import { METRIC_PREFIX, ServerMetrics } from '../src/server/metrics.ts';
import { schemaErrors } from './helpers/json-schema.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CHART = join(ROOT, 'deploy/helm/spikeserve');
const read = (path: string): string => readFileSync(join(ROOT, path), 'utf8');

type YamlValue = null | boolean | number | string | YamlValue[] | { [key: string]: YamlValue };
type YamlMap = { [key: string]: YamlValue };
const isMap = (v: YamlValue | undefined): v is YamlMap => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * A values file as Helm reads it: Helm parses YAML with go-yaml, whose YAML 1.1 schema takes
 * `yes`/`no`/`on`/`off` for booleans, so the yaml package reads 1.1 too; a duplicate key is an error.
 */
const parseValues = (text: string): YamlValue => parseYaml(text, { version: '1.1', strict: true, uniqueKeys: true }) as YamlValue;
const readYaml = (path: string): YamlValue => parseValues(read(path));

/** Helm's merge of user values over the chart's: maps merge key by key, null deletes a key. */
function coalesce(defaults: YamlValue, overrides: YamlValue): YamlValue {
  if (!isMap(defaults) || !isMap(overrides)) return overrides;
  const out: YamlMap = { ...defaults };
  for (const [key, value] of Object.entries(overrides)) {
    if (value === null) delete out[key];
    else out[key] = key in out ? coalesce(out[key] as YamlValue, value) : value;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
describe('values files are read as Helm reads them', () => {
  it('YAML 1.1 scalars, flow collections and block scalars; a duplicate key is an error', () => {
    expect(parseValues('a: yes\nb: off\nc: [x, {d: 1}]\ne: |\n  two\n  lines\nf: ~\n')).toEqual({ a: true, b: false, c: ['x', { d: 1 }], e: 'two\nlines\n', f: null });
    expect(() => parseValues('a: 1\na: 2')).toThrow(/unique|duplicate/i);
  });
});

// ---------------------------------------------------------------------------------------------
describe('Helm chart values', () => {
  const schema = JSON.parse(read('deploy/helm/spikeserve/values.schema.json')) as object;
  const defaults = readYaml('deploy/helm/spikeserve/values.yaml');
  const ciFiles = readdirSync(join(CHART, 'ci')).filter((f) => f.endsWith('-values.yaml'));

  it('Chart.yaml is a v2 application chart', () => {
    const chart = readYaml('deploy/helm/spikeserve/Chart.yaml') as YamlMap;
    expect(chart).toMatchObject({ apiVersion: 'v2', name: 'spikeserve', type: 'application' });
    expect(String(chart['version'])).toMatch(/^\d+\.\d+\.\d+$/);
  });

  it('values.yaml validates against values.schema.json', () => {
    expect(schemaErrors(schema, defaults)).toEqual([]);
  });

  it.each(ciFiles)('ci/%s, merged over the defaults, validates', (file) => {
    expect(schemaErrors(schema, coalesce(defaults, readYaml(`deploy/helm/spikeserve/ci/${file}`)))).toEqual([]);
  });

  it('the maximal example turns every optional feature on', () => {
    const max = coalesce(defaults, readYaml('deploy/helm/spikeserve/ci/max-values.yaml')) as YamlMap;
    const at = (path: string): YamlValue | undefined =>
      path.split('.').reduce<YamlValue | undefined>((v, k) => (isMap(v) ? v[k] : undefined), max);
    for (const flag of ['metrics.serviceMonitor.enabled', 'autoscaling.keda.enabled', 'podDisruptionBudget.enabled', 'serviceAccount.create']) {
      expect(at(flag), flag).toBe(true);
    }
    expect(at('model.source')).toBe('pvc');
    expect(at('auth.apiKeys')).toHaveLength(2);
    const hpa = coalesce(defaults, readYaml('deploy/helm/spikeserve/ci/hpa-values.yaml')) as YamlMap;
    expect((hpa['autoscaling'] as YamlMap)['hpa']).toMatchObject({ enabled: true });
  });

  it('rejects wrong values', () => {
    const wrong = coalesce(defaults, {
      bogusTopLevel: 1,
      server: { device: 'tpu', port: 'eighty' },
      model: { source: 'existingClaim' }, // with existingClaim left empty
      autoscaling: { hpa: { enabled: true }, keda: { enabled: true } },
      probes: { startup: { periodSeconds: 0 } },
    });
    const errors = schemaErrors(schema, wrong).join('\n');
    expect(errors).toContain('(root) must NOT have additional properties "bogusTopLevel"');
    expect(errors).toContain('/server/device must be equal to one of the allowed values');
    expect(errors).toContain('/server/port must be integer');
    expect(errors).toContain('/model/existingClaim must NOT have fewer than 1 characters');
    expect(errors).toContain('/autoscaling/keda/enabled must be equal to constant');
    expect(errors).toContain('/probes/startup/periodSeconds must be >= 1');
  });

  it('the default startup probe allows at least 30 minutes for loading a model', () => {
    const startup = ((defaults as YamlMap)['probes'] as YamlMap)['startup'] as YamlMap;
    expect(Number(startup['periodSeconds']) * Number(startup['failureThreshold'])).toBeGreaterThanOrEqual(30 * 60);
  });

  it('server.device, server.weights and server.logLevel accept exactly what the server accepts', () => {
    const serverSchema = (schema as { properties: { server: { properties: Record<string, { enum?: string[] }> } } }).properties.server.properties;
    const choices = (flag: string): readonly string[] | undefined => FLAGS.find((f) => f.flag === flag)?.choices;
    expect(serverSchema['device']?.enum).toEqual(choices('device'));
    expect(serverSchema['logLevel']?.enum).toEqual(choices('log-level'));
    expect(serverSchema['weights']?.enum).toEqual([...(choices('weights') ?? []), null]); // null: the server's default
  });
});

// ---------------------------------------------------------------------------------------------
// Templates: Go-template structure, include names, and .Values paths, checked without helm.

interface TemplateFile {
  readonly name: string;
  readonly text: string;
}

interface Action {
  readonly body: string; // inside {{ }}, trim markers and spaces removed
  readonly line: number;
}

/** Splits a template into its actions; reports braces that do not pair up. */
function templateActions(file: TemplateFile, errors: string[]): Action[] {
  const actions: Action[] = [];
  const { text } = file;
  let pos = 0;
  for (;;) {
    const open = text.indexOf('{{', pos);
    const stray = text.indexOf('}}', pos);
    if (stray !== -1 && (open === -1 || stray < open)) {
      errors.push(`${file.name}:${lineAt(text, stray)}: "}}" without "{{"`);
      pos = stray + 2;
      continue;
    }
    if (open === -1) break;
    const close = text.indexOf('}}', open + 2);
    const nested = text.indexOf('{{', open + 2);
    if (close === -1 || (nested !== -1 && nested < close)) {
      errors.push(`${file.name}:${lineAt(text, open)}: "{{" without "}}"`);
      if (close === -1) break;
      pos = nested;
      continue;
    }
    const body = text.slice(open + 2, close).replace(/^-\s/, '').replace(/\s-$/, '').trim();
    actions.push({ body, line: lineAt(text, open) });
    pos = close + 2;
  }
  return actions;
}

function lineAt(text: string, index: number): number {
  return text.slice(0, index).split('\n').length;
}

const VALUES_PATH = /\$?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)/g;

/** Structure, names and value paths of a chart's templates. */
function templateErrors(files: readonly TemplateFile[], values: YamlValue): string[] {
  const errors: string[] = [];
  const defined = new Set<string>();
  const included: { name: string; where: string }[] = [];
  for (const file of files) {
    const stack: { keyword: string; line: number }[] = [];
    for (const { body, line } of templateActions(file, errors)) {
      const where = `${file.name}:${line}`;
      if (body.startsWith('/*')) {
        if (!body.endsWith('*/')) errors.push(`${where}: unterminated comment`);
        continue;
      }
      const keyword = /^[a-z]+/.exec(body)?.[0] ?? '';
      if (['if', 'range', 'with', 'define', 'block'].includes(keyword)) stack.push({ keyword, line });
      else if (keyword === 'else') {
        const top = stack[stack.length - 1];
        if (top === undefined || !['if', 'with', 'range'].includes(top.keyword)) errors.push(`${where}: else outside if/with/range`);
      } else if (keyword === 'end' && stack.pop() === undefined) errors.push(`${where}: end without a block`);
      const define = /^define\s+"([^"]+)"/.exec(body);
      if (define) defined.add(define[1] as string);
      for (const m of body.matchAll(/\b(?:include|template)\s+"([^"]+)"/g)) included.push({ name: m[1] as string, where });
      for (const m of body.matchAll(/\binclude\s+\(print\s+\$\.Template\.BasePath\s+"\/([^"]+)"\)/g)) {
        if (!files.some((f) => f.name === m[1])) errors.push(`${where}: includes missing template file ${m[1]}`);
      }
      for (const m of body.matchAll(VALUES_PATH)) {
        const path = (m[1] as string).slice(1);
        if (!hasPath(values, path)) errors.push(`${where}: .Values.${path} is not in values.yaml`);
      }
    }
    for (const open of stack) errors.push(`${file.name}:${open.line}: ${open.keyword} without end`);
  }
  for (const { name, where } of included) if (!defined.has(name)) errors.push(`${where}: include of undefined "${name}"`);
  return errors;
}

function hasPath(values: YamlValue, path: string): boolean {
  let node: YamlValue | undefined = values;
  for (const key of path.split('.')) {
    if (!isMap(node) || !(key in node)) return false;
    node = node[key];
  }
  return true;
}

/** Values keys that no template reads (a read of a parent map reads all of it). */
function unusedValues(values: YamlValue, files: readonly TemplateFile[]): string[] {
  const read = new Set(files.flatMap((f) => [...f.text.matchAll(VALUES_PATH)].map((m) => (m[1] as string).slice(1))));
  const unused: string[] = [];
  const walk = (node: YamlValue, path: string): void => {
    if (read.has(path)) return;
    if (isMap(node) && Object.keys(node).length > 0) {
      for (const [key, child] of Object.entries(node)) walk(child, path === '' ? key : `${path}.${key}`);
    } else unused.push(path);
  };
  walk(values, '');
  return unused;
}

describe('Helm chart templates', () => {
  const values = readYaml('deploy/helm/spikeserve/values.yaml');
  const templates: TemplateFile[] = readdirSync(join(CHART, 'templates')).map((name) => ({
    name,
    text: readFileSync(join(CHART, 'templates', name), 'utf8'),
  }));
  const template = (name: string): string => templates.find((t) => t.name === name)?.text ?? '';

  it('has the expected objects', () => {
    const kinds = templates.map((t) => /^kind:\s*(\w+)/m.exec(t.text)?.[1]).filter((k) => k !== undefined);
    expect(kinds.sort()).toEqual(
      ['ConfigMap', 'Deployment', 'HorizontalPodAutoscaler', 'PersistentVolumeClaim', 'PodDisruptionBudget', 'ScaledObject', 'Secret', 'Service', 'ServiceAccount', 'ServiceMonitor'].sort(),
    );
    expect(templates.map((t) => t.name)).toEqual(expect.arrayContaining(['NOTES.txt', '_helpers.tpl']));
  });

  it('braces and blocks balance, includes resolve, every .Values path exists', () => {
    expect(templateErrors(templates, values)).toEqual([]);
  });

  it('every key in values.yaml is read by some template', () => {
    expect(unusedValues(values, templates)).toEqual([]);
  });

  it('the checker finds broken templates', () => {
    const broken: TemplateFile[] = [
      { name: 'a.yaml', text: '{{ if .Values.replicaCount }}\nx: {{ .Values.nope.deeper }}\n{{ include "missing.helper" . }}' },
      { name: 'b.yaml', text: 'y: {{ .Values.image.tag }\n{{ end }}\nz: }}\n{{ else }}' },
      { name: 'c.yaml', text: '{{ include (print $.Template.BasePath "/gone.yaml") . }}{{/* open comment }}' },
    ];
    const errors = templateErrors(broken, values).join('\n');
    expect(errors).toContain('a.yaml:1: if without end');
    expect(errors).toContain('a.yaml:2: .Values.nope.deeper is not in values.yaml');
    expect(errors).toContain('include of undefined "missing.helper"');
    expect(errors).toContain('b.yaml:1: "{{" without "}}"');
    expect(errors).toContain('b.yaml:3: "}}" without "{{"');
    expect(errors).toContain('b.yaml:4: else outside if/with/range');
    expect(errors).toContain('c.yaml:1: includes missing template file gone.yaml');
    expect(errors).toContain('c.yaml:1: unterminated comment');
    expect(unusedValues({ used: 1, unused: { leaf: 2 } }, [{ name: 'd', text: '{{ .Values.used }}' }])).toEqual(['unused.leaf']);
  });

  it('every server flag the chart sets is a flag the server knows, and every flag is reachable', () => {
    const known = new Map(FLAGS.map((f) => [envName(f.flag), f.flag]));
    const setByEnv = [...(template('configmap.yaml') + template('deployment.yaml')).matchAll(/\b(SPIKESERVE_[A-Z_]+)\b/g)].map((m) => m[1] as string);
    const argsBlock = /args:\n((?:\s+- .*\n|\s+\{\{.*\n)+)/.exec(template('deployment.yaml'))?.[1] ?? '';
    const setByArg = [...argsBlock.matchAll(/- --([a-z-]+)/g)].map((m) => m[1] as string);
    for (const env of setByEnv) expect(known.has(env), `${env} is not a server flag`).toBe(true);
    for (const flag of setByArg) expect(FLAGS.some((f) => f.flag === flag), `--${flag} is not a server flag`).toBe(true);
    const reachable = new Set([...setByEnv.map((e) => known.get(e)), ...setByArg]);
    const missing = FLAGS.map((f) => f.flag).filter((f) => !reachable.has(f));
    expect(missing, 'flags the chart cannot set: add them to values.yaml, the schema and configmap.yaml').toEqual([]);
  });

  it('the Deployment has the probes, grace period and security settings of a long-loading server', () => {
    const deployment = template('deployment.yaml');
    for (const probe of ['startupProbe', 'readinessProbe']) {
      expect(deployment).toMatch(new RegExp(`${probe}:\\n\\s+httpGet:\\n\\s+path: /health`));
    }
    expect(deployment).toMatch(/livenessProbe:\n\s+httpGet:\n\s+path: \/health\/live\n/);
    expect(deployment).toContain('terminationGracePeriodSeconds: {{ include "spikeserve.terminationGracePeriodSeconds" . }}');
    expect(template('_helpers.tpl')).toMatch(/fail \(printf "terminationGracePeriodSeconds/);
    const defaults = values as YamlMap;
    expect(defaults['securityContext']).toMatchObject({ readOnlyRootFilesystem: true, allowPrivilegeEscalation: false });
    expect(defaults['podSecurityContext']).toMatchObject({ runAsNonRoot: true, runAsUser: 10001 });
    expect(deployment).toMatch(/mountPath: \{\{ \.Values\.server\.cacheDir \}\}/);
    expect(deployment).toMatch(/mountPath: \/tmp/);
  });
});

// ---------------------------------------------------------------------------------------------
// Dockerfile

interface DockerInstruction {
  readonly keyword: string;
  readonly args: string;
}

/** Instructions per stage (continuation lines joined, comments dropped); the global ARGs first. */
function dockerStages(text: string): DockerInstruction[][] {
  const joined = text.replace(/\\\r?\n/g, ' ');
  const stages: DockerInstruction[][] = [[]];
  for (const raw of joined.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = /^(\w+)\s*(.*)$/.exec(line);
    if (!m) continue;
    const instruction = { keyword: (m[1] as string).toUpperCase(), args: (m[2] as string).trim() };
    if (instruction.keyword === 'FROM') stages.push([]);
    (stages[stages.length - 1] as DockerInstruction[]).push(instruction);
  }
  return stages;
}

function execForm(args: string | undefined): string[] | null {
  if (args === undefined) return null;
  try {
    const parsed: unknown = JSON.parse(args);
    return Array.isArray(parsed) && parsed.every((x) => typeof x === 'string') ? (parsed as string[]) : null;
  } catch {
    return null;
  }
}

/** Problems with the image: who it runs as, what it runs, what it exposes, how it installs. */
function dockerfileErrors(text: string, startCommand: string): string[] {
  const errors: string[] = [];
  const [globals = [], ...stages] = dockerStages(text);
  if (stages.length < 2) errors.push('not multi-stage');
  const final = stages[stages.length - 1] ?? [];
  const last = (keyword: string): DockerInstruction | undefined => final.filter((i) => i.keyword === keyword).pop();

  const argDefaults = new Map(globals.filter((i) => i.keyword === 'ARG').map((i) => i.args.split('=') as [string, string]));
  const base = (final[0]?.args ?? '').split(/\s+/)[0]?.replace(/^\$\{(\w+)\}$/, (_m, name: string) => argDefaults.get(name) ?? '');
  if (!/^node:20(\.|-|$)/.test(base ?? '')) errors.push(`final stage is not based on node:20 (${base})`);

  const user = last('USER')?.args.split(':')[0];
  if (user === undefined) errors.push('final stage has no USER (runs as root)');
  else if (!/^\d+$/.test(user) || user === '0') errors.push(`final stage USER "${user}" is not a numeric non-root UID`);

  const exposed = final.filter((i) => i.keyword === 'EXPOSE').flatMap((i) => i.args.split(/\s+/));
  if (!exposed.some((p) => p === '8000' || p === '8000/tcp')) errors.push('port 8000 is not EXPOSEd');

  const entrypoint = execForm(last('ENTRYPOINT')?.args);
  const cmd = execForm(last('CMD')?.args) ?? [];
  if (entrypoint === null) errors.push('ENTRYPOINT is missing or not in exec form (signals would not reach node)');
  else {
    const command = [...entrypoint, ...cmd].join(' ');
    if (!command.startsWith(startCommand)) errors.push(`start command "${command}" does not begin with "${startCommand}"`);
    if (!/--host 0\.0\.0\.0\b/.test(command)) errors.push('start command does not pass --host 0.0.0.0');
  }

  const healthcheck = last('HEALTHCHECK')?.args ?? '';
  if (!healthcheck.includes('/health')) errors.push('no HEALTHCHECK on /health');
  if (/\b(curl|wget)\b/.test(healthcheck)) errors.push('HEALTHCHECK uses curl/wget, absent from slim images');
  if (last('STOPSIGNAL')?.args !== 'SIGTERM') errors.push('STOPSIGNAL is not SIGTERM');
  if (!final.some((i) => i.keyword === 'COPY' && /(^|\s)models\/?(\s|$)/.test(i.args))) errors.push('the default model (models/) is not copied in');

  stages.forEach((stage, index) => {
    stage.forEach((instruction, at) => {
      if (instruction.keyword !== 'RUN' || !/\bnpm ci\b/.test(instruction.args)) return;
      const skipped = instruction.args.includes('ONNXRUNTIME_NODE_INSTALL=skip') ||
        stage.slice(0, at).some((i) => i.keyword === 'ENV' && /\bONNXRUNTIME_NODE_INSTALL=skip\b/.test(i.args));
      if (!skipped) errors.push(`stage ${index + 1}: npm ci without ONNXRUNTIME_NODE_INSTALL=skip`);
      if (stage === final && !instruction.args.includes('--omit=dev')) errors.push('final stage installs dev dependencies');
    });
  });
  return errors;
}

describe('Dockerfile', () => {
  const packageJson = JSON.parse(read('package.json')) as { scripts: Record<string, string> };
  // The root README.md is written elsewhere; package.json's start script is the source of truth.
  // The script may set environment variables first (`A=b node …`); the image sets them with ENV.
  const startScript = packageJson.scripts['start'] ?? '';
  const startEnv = startScript.match(/^(?:\w+=\S+\s+)*/)?.[0].trim().split(/\s+/).filter((a) => a !== '') ?? [];
  const startCommand = startScript.slice(startScript.match(/^(?:\w+=\S+\s+)*/)?.[0].length ?? 0);

  it('the start script is the documented one', () => {
    expect(startCommand).toBe('node --max-semi-space-size=1 bin/spikeserve.js serve');
    expect(startEnv).toEqual(['GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1']);
    // The root README documents `npm start` (this script); deploy/README.md spells the command out.
    expect(read('README.md')).toMatch(/npm start|src\/main\/cli\.ts serve/);
    expect(read('deploy/README.md')).toContain(`${startCommand} --host 0.0.0.0`);
  });

  it('runs the start command as a non-root user, exposes 8000, checks /health', () => {
    const dockerfile = read('Dockerfile');
    expect(dockerfileErrors(dockerfile, startCommand)).toEqual([]);
    // The start script's environment is the image's too.
    for (const assignment of startEnv) expect(dockerfile).toMatch(new RegExp(`^ENV .*\\b${assignment.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\b`, 'm'));
  });

  it('the checker finds a broken Dockerfile', () => {
    const broken = [
      'FROM node:18 AS only',
      'WORKDIR /app',
      'COPY . .',
      'RUN npm ci',
      'USER root',
      'EXPOSE 3000',
      'HEALTHCHECK CMD curl -f http://localhost:8000/health',
      'CMD node src/main/cli.ts',
    ].join('\n');
    expect(dockerfileErrors(broken, startCommand)).toEqual([
      'not multi-stage',
      'final stage is not based on node:20 (node:18)',
      'final stage USER "root" is not a numeric non-root UID',
      'port 8000 is not EXPOSEd',
      'ENTRYPOINT is missing or not in exec form (signals would not reach node)',
      'HEALTHCHECK uses curl/wget, absent from slim images',
      'STOPSIGNAL is not SIGTERM',
      'the default model (models/) is not copied in',
      'stage 1: npm ci without ONNXRUNTIME_NODE_INSTALL=skip',
      'final stage installs dev dependencies',
    ]);
  });

  it('.dockerignore keeps installs, caches and outputs out of the context, and the sources in', () => {
    const ignored = read('.dockerignore').split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
    expect(ignored).toEqual(expect.arrayContaining(['node_modules', '.git', '.cache', 'bench/out', 'tools/train/work']));
    for (const needed of ['src', 'models', 'package.json', 'package-lock.json', '.npmrc', 'bin']) {
      expect(ignored, needed).not.toContain(needed);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Grafana dashboard

const HISTOGRAMS = [
  'time_to_first_token_seconds', 'inter_token_latency_seconds', 'e2e_request_latency_seconds',
  'request_queue_time_seconds', 'request_prefill_time_seconds', 'request_decode_time_seconds',
];
const GAUGES = [
  'num_requests_running', 'num_requests_waiting', 'num_waiting_prompt_tokens', 'kv_cache_usage_perc', 'kv_pages_used', 'kv_pages_capacity',
  'recurrent_state_bytes', 'prefill_tokens_per_second', 'prefix_store_bytes', 'prefix_store_files', 'prefix_store_read_buffer_bytes',
];
const COUNTERS = [
  'prompt_tokens_total', 'generation_tokens_total', 'request_success_total', 'prefix_cache_queries_total', 'prefix_cache_hits_total', 'spike_zeros_total', 'spike_values_total',
  'num_preemptions_total', 'engine_restarts_total',
  'prefix_store_hits_total', 'prefix_store_read_bytes_total', 'prefix_store_writes_total', 'prefix_store_written_bytes_total', 'prefix_store_write_failures_total',
  'prefix_store_writes_skipped_total', 'prefix_store_read_failures_total',
];

interface Panel {
  type?: string;
  title?: string;
  datasource?: { uid?: string };
  targets?: { expr?: string }[];
  panels?: Panel[];
}
interface Dashboard {
  schemaVersion?: number;
  panels?: Panel[];
  templating?: { list?: { name?: string; type?: string; query?: unknown; definition?: string }[] };
}

/**
 * One dashboard query through Prometheus's own PromQL grammar (@prometheus-io/lezer-promql): its
 * syntax errors, the metric names it selects, and those a histogram_quantile reads. Grafana's
 * interval variables become a duration first, and a variable's `label_values(selector, label)` (a
 * Grafana function, not PromQL) is read as its selector.
 */
function promql(expr: string): { errors: string[]; names: string[]; quantileNames: string[] } {
  const text = (/^\s*label_values\((.*),\s*\w+\s*\)\s*$/s.exec(expr)?.[1] ?? expr).replace(/\$__(rate_interval|interval|range)\b/g, '5m');
  const errors: string[] = [];
  const names: string[] = [];
  const quantileNames: string[] = [];
  const quantileCalls: { from: number; to: number }[] = [];
  promqlParser.parse(text).iterate({
    enter: (n) => {
      if (n.type.isError) errors.push(`PromQL syntax error at ${JSON.stringify(text.slice(n.from, n.from + 24) || '(end)')}`);
      else if (n.name === 'FunctionCall' && /^histogram_quantile\b/.test(text.slice(n.from, n.to))) quantileCalls.push({ from: n.from, to: n.to });
      else if (n.name === 'Identifier' && n.node.parent?.name === 'VectorSelector') {
        const name = text.slice(n.from, n.to);
        names.push(name);
        if (quantileCalls.some((c) => n.from >= c.from && n.to <= c.to)) quantileNames.push(name);
      }
    },
  });
  return { errors, names, quantileNames };
}

/** Metric names (base names, histogram suffixes removed) the dashboard's queries read, and problems. */
function dashboardMetrics(dashboard: Dashboard): { used: Set<string>; errors: string[] } {
  const errors: string[] = [];
  const used = new Set<string>();
  const queries: { where: string; expr: string }[] = [];
  const panels = (dashboard.panels ?? []).flatMap((p) => [p, ...(p.panels ?? [])]).filter((p) => p.type !== 'row');
  for (const panel of panels) {
    const where = `panel "${panel.title ?? '?'}"`;
    if (panel.datasource?.uid !== '${datasource}') errors.push(`${where}: datasource is not the $datasource variable`);
    if ((panel.targets ?? []).length === 0) errors.push(`${where}: no queries`);
    for (const t of panel.targets ?? []) queries.push({ where, expr: t.expr ?? '' });
  }
  const variables = dashboard.templating?.list ?? [];
  if (!variables.some((v) => v.name === 'datasource' && v.type === 'datasource' && v.query === 'prometheus')) errors.push('no Prometheus datasource variable');
  if (!variables.some((v) => v.name === 'model_name' && v.type === 'query')) errors.push('no model_name variable');
  for (const v of variables) if (v.definition !== undefined) queries.push({ where: `variable ${v.name ?? '?'}`, expr: v.definition });

  for (const { where, expr } of queries) {
    if (expr.trim() === '') {
      errors.push(`${where}: empty query`);
      continue;
    }
    const parsed = promql(expr);
    for (const e of parsed.errors) errors.push(`${where}: ${e}`);
    for (const name of parsed.names) {
      if (!name.startsWith('spikeserve:')) {
        errors.push(`${where}: ${name} is not a spikeserve: metric`);
        continue;
      }
      const metric = name.slice('spikeserve:'.length);
      const suffix = /_(bucket|sum|count)$/.exec(metric);
      const histogramBase = suffix ? metric.slice(0, suffix.index) : null;
      if (histogramBase !== null && HISTOGRAMS.includes(histogramBase)) used.add(histogramBase);
      else if (HISTOGRAMS.includes(metric)) errors.push(`${where}: ${name} is a histogram; query _bucket, _sum or _count`);
      else if (GAUGES.includes(metric) || COUNTERS.includes(metric)) used.add(metric);
      else errors.push(`${where}: ${name} is not a spikeserve metric`);
    }
    if (parsed.quantileNames.some((name) => !name.endsWith('_bucket'))) errors.push(`${where}: histogram_quantile over something other than _bucket`);
  }
  if (typeof dashboard.schemaVersion !== 'number' || dashboard.schemaVersion < 36) errors.push('schemaVersion missing or older than 36');
  return { used, errors };
}

describe('Grafana dashboard', () => {
  const dashboard = JSON.parse(read('deploy/grafana/spikeserve-dashboard.json')) as Dashboard;

  it('the metric list checked here is what the server registers', async () => {
    const registry = new ServerMetrics('m', { collectDefault: false }).registry;
    const registered = (await registry.getMetricsAsJSON()).map((m) => `${m.name.slice(METRIC_PREFIX.length)} ${String(m.type)}`);
    const listed = [
      ...HISTOGRAMS.map((n) => `${n} histogram`),
      ...GAUGES.map((n) => `${n} gauge`),
      ...COUNTERS.map((n) => `${n} counter`),
    ];
    expect(registered.sort()).toEqual(listed.sort());
  });

  it('queries only spikeserve metrics, through the datasource and model_name variables', () => {
    expect(dashboardMetrics(dashboard).errors).toEqual([]);
  });

  it('covers latency, load, memory and throughput', () => {
    const { used } = dashboardMetrics(dashboard);
    expect([...used].sort()).toEqual([...HISTOGRAMS, ...GAUGES, ...COUNTERS].sort());
  });

  it('the checker finds a broken dashboard', () => {
    const broken: Dashboard = {
      schemaVersion: 27,
      templating: { list: [] },
      panels: [
        { type: 'timeseries', title: 'vllm', datasource: { uid: 'prom-1' }, targets: [{ expr: 'vllm:num_requests_waiting' }] },
        { type: 'row', title: 'row', panels: [{ type: 'timeseries', title: 'typo', datasource: { uid: '${datasource}' }, targets: [{ expr: 'rate(spikeserve:prompt_token_total[5m])' }] }] },
        { type: 'timeseries', title: 'raw histogram', datasource: { uid: '${datasource}' }, targets: [{ expr: 'spikeserve:time_to_first_token_seconds' }] },
        { type: 'timeseries', title: 'empty', datasource: { uid: '${datasource}' }, targets: [] },
        { type: 'timeseries', title: 'unclosed', datasource: { uid: '${datasource}' }, targets: [{ expr: 'rate(spikeserve:prompt_tokens_total[$__rate_interval]' }] },
        { type: 'timeseries', title: 'quantile', datasource: { uid: '${datasource}' }, targets: [{ expr: 'histogram_quantile(0.9, rate(spikeserve:time_to_first_token_seconds_sum[5m]))' }] },
      ],
    };
    expect(dashboardMetrics(broken).errors).toEqual([
      'panel "vllm": datasource is not the $datasource variable',
      'panel "empty": no queries',
      'no Prometheus datasource variable',
      'no model_name variable',
      'panel "vllm": vllm:num_requests_waiting is not a spikeserve: metric',
      'panel "typo": spikeserve:prompt_token_total is not a spikeserve metric',
      'panel "raw histogram": spikeserve:time_to_first_token_seconds is a histogram; query _bucket, _sum or _count',
      'panel "unclosed": PromQL syntax error at "(end)"',
      'panel "quantile": histogram_quantile over something other than _bucket',
      'schemaVersion missing or older than 36',
    ]);
  });
});

// ---------------------------------------------------------------------------------------------
describe('deploy/README.md', () => {
  const readme = existsSync(join(ROOT, 'deploy/README.md')) ? read('deploy/README.md') : '';

  it('shows how to build, lint, render and install, and how to point the endpoint picker at spikeserve metrics', () => {
    for (const snippet of [
      'docker build',
      'helm lint deploy/helm/spikeserve',
      'helm template',
      'helm install',
      '--total-queued-requests-metric',
      '--kv-cache-usage-percentage-metric',
      'spikeserve:num_requests_waiting',
      'spikeserve:kv_cache_usage_perc',
    ]) {
      expect(readme, snippet).toContain(snippet);
    }
  });
});
