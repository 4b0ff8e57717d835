// Static checks of the Gateway API inference extension example (deploy/gateway/): the InferencePool
// selects the pods the spikeserve chart makes with deploy/gateway/spikeserve-values.yaml, on the
// server's port; its endpointPickerRef names the picker's Service and port; the picker runs for that
// pool with the configuration it mounts; that configuration maps the pods' engine label to metric
// names the server really exports as gauges; the HTTPRoute sends traffic to the pool. Each check is a
// pure function run on the real files (no problems) and on broken copies (the problem is found).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { FLAGS } from '../src/server/config.ts';
import { ServerMetrics } from '../src/server/metrics.ts';
import { schemaErrors } from './helpers/json-schema.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const read = (path: string): string => readFileSync(join(ROOT, path), 'utf8');

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const at = (v: unknown, path: string): unknown => path.split('.').reduce<unknown>((x, k) => (isObj(x) ? x[k] : Array.isArray(x) ? x[Number(k)] : undefined), v);
const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);

/** Helm's merge of user values over the chart's (maps merge, anything else replaces). */
function coalesce(defaults: unknown, overrides: unknown): unknown {
  if (!isObj(defaults) || !isObj(overrides)) return overrides;
  const out: Obj = { ...defaults };
  for (const [k, v] of Object.entries(overrides)) out[k] = k in out ? coalesce(out[k], v) : v;
  return out;
}

const DEFAULT_ENGINE_LABEL = 'inference.networking.k8s.io/engine-type';

/** Gauge names the server registers (with --metrics-compat vllm, the vLLM copies too). */
async function serverGauges(): Promise<Set<string>> {
  const registry = new ServerMetrics('m', { collectDefault: false, compat: 'vllm' }).registry;
  return new Set((await registry.getMetricsAsJSON()).filter((m) => String(m.type) === 'gauge').map((m) => m.name));
}

/** Problems of the example manifests against the chart values they go with. */
function gatewayErrors(docs: readonly Obj[], values: unknown, gauges: ReadonlySet<string>): string[] {
  const errors: string[] = [];
  const ofKind = (kind: string): Obj[] => docs.filter((d) => d['kind'] === kind);
  const named = (kind: string, name: unknown): Obj | undefined => ofKind(kind).find((d) => at(d, 'metadata.name') === name);
  const pool = ofKind('InferencePool')[0];
  if (pool === undefined) return ['no InferencePool'];
  if (pool['apiVersion'] !== 'inference.networking.k8s.io/v1') errors.push(`InferencePool apiVersion ${String(pool['apiVersion'])} is not inference.networking.k8s.io/v1`);
  const poolName = at(pool, 'metadata.name');

  // The pool selects the chart's pods, on the server's port.
  const podLabels = (at(values, 'podLabels') ?? {}) as Obj;
  const selector = (at(pool, 'spec.selector.matchLabels') ?? {}) as Obj;
  if (Object.keys(selector).length === 0) errors.push('the InferencePool selects no labels');
  for (const [k, v] of Object.entries(selector)) if (podLabels[k] !== v) errors.push(`the pods do not carry the selected label ${k}=${String(v)}`);
  const ports = list(at(pool, 'spec.targetPorts')).map((p) => at(p, 'number'));
  if (!ports.includes(at(values, 'server.port'))) errors.push(`targetPorts ${JSON.stringify(ports)} do not include the server port ${String(at(values, 'server.port'))}`);

  // The picker: its Service and port, its Deployment for this pool, the configuration it mounts.
  const ref = at(pool, 'spec.endpointPickerRef');
  const service = named('Service', at(ref, 'name'));
  const eppDeployment = ofKind('Deployment')[0];
  if (service === undefined) errors.push(`endpointPickerRef names no Service of the example (${String(at(ref, 'name'))})`);
  else {
    const servicePort = list(at(service, 'spec.ports')).find((p) => at(p, 'port') === at(ref, 'port.number'));
    if (servicePort === undefined) errors.push(`the picker Service has no port ${String(at(ref, 'port.number'))}`);
    const podTemplateLabels = (at(eppDeployment, 'spec.template.metadata.labels') ?? {}) as Obj;
    for (const [k, v] of Object.entries((at(service, 'spec.selector') ?? {}) as Obj)) {
      if (podTemplateLabels[k] !== v) errors.push(`the picker Service selects ${k}=${String(v)}, which the picker pods do not carry`);
    }
    const container = at(eppDeployment, 'spec.template.spec.containers.0');
    const containerPorts = list(at(container, 'ports')).map((p) => at(p, 'containerPort'));
    if (servicePort !== undefined && !containerPorts.includes(at(servicePort, 'targetPort'))) errors.push('the picker Service targets a port the picker does not open');
  }
  const container = at(eppDeployment, 'spec.template.spec.containers.0');
  const args = list(at(container, 'args')).map(String);
  const arg = (flag: string): string | undefined => {
    const i = args.indexOf(flag);
    return i >= 0 ? args[i + 1] : args.find((a) => a.startsWith(`${flag}=`))?.slice(flag.length + 1);
  };
  if (arg('--pool-name') !== poolName) errors.push(`the picker runs for pool ${String(arg('--pool-name'))}, not ${String(poolName)}`);
  if (String(arg('--grpc-port')) !== String(at(ref, 'port.number'))) errors.push('the picker listens on another port than endpointPickerRef names');
  const configFile = arg('--config-file') ?? '';
  const mount = list(at(container, 'volumeMounts')).find((m) => configFile.startsWith(`${String(at(m, 'mountPath'))}/`));
  const volume = list(at(eppDeployment, 'spec.template.spec.volumes')).find((v) => at(v, 'name') === at(mount, 'name'));
  const configMap = named('ConfigMap', at(volume, 'configMap.name'));
  const configText = ((at(configMap, 'data') ?? {}) as Obj)[configFile.slice(configFile.lastIndexOf('/') + 1)];
  if (typeof configText !== 'string') return [...errors, `--config-file ${configFile} is not a key of a ConfigMap the picker mounts`];

  // Its configuration: every profile plugin is defined, and spikeserve's pods map to exported gauges.
  const config = parse(configText) as Obj;
  if (config['kind'] !== 'EndpointPickerConfig') errors.push('the picker configuration is not an EndpointPickerConfig');
  const plugins = list(config['plugins']);
  const pluginNames = new Set(plugins.map((p) => String(at(p, 'name') ?? at(p, 'type'))));
  for (const profile of list(config['schedulingProfiles'])) {
    for (const p of list(at(profile, 'plugins'))) if (!pluginNames.has(String(at(p, 'pluginRef')))) errors.push(`profile plugin ${String(at(p, 'pluginRef'))} is not defined`);
  }
  const extractor = plugins.find((p) => at(p, 'type') === 'core-metrics-extractor');
  const labelKey = String(at(extractor, 'parameters.engineLabelKey') ?? DEFAULT_ENGINE_LABEL);
  const engine = list(at(extractor, 'parameters.engineConfigs')).find((e) => at(e, 'name') === podLabels[labelKey]);
  if (engine === undefined) errors.push(`no engineConfigs entry for the pods' ${labelKey}=${String(podLabels[labelKey])}`);
  for (const spec of ['queuedRequestsSpec', 'runningRequestsSpec', 'kvUsageSpec']) {
    const name = String(at(engine, spec) ?? '').replace(/\{.*$/, '');
    if (!gauges.has(name)) errors.push(`${spec} "${name}" is not a gauge the server exports`);
  }
  if (!plugins.some((p) => at(p, 'type') === 'metrics-data-source' && (at(p, 'parameters.path') ?? '/metrics') === '/metrics')) errors.push('no metrics-data-source on /metrics');

  // RBAC and the route.
  const rules = list(at(ofKind('Role')[0], 'rules'));
  if (!rules.some((r) => list(at(r, 'resources')).includes('pods') && list(at(r, 'verbs')).includes('watch'))) errors.push('the picker may not watch pods');
  const backends = ofKind('HTTPRoute').flatMap((r) => list(at(r, 'spec.rules')).flatMap((rule) => list(at(rule, 'backendRefs'))));
  if (!backends.some((b) => at(b, 'kind') === 'InferencePool' && at(b, 'group') === 'inference.networking.k8s.io' && at(b, 'name') === poolName)) {
    errors.push('no HTTPRoute sends traffic to the InferencePool');
  }
  return errors;
}

const docsOf = (text: string): Obj[] => parseAllDocuments(text).map((d) => d.toJSON() as Obj);
const chartDefaults = parse(read('deploy/helm/spikeserve/values.yaml')) as unknown;
const gatewayValues = parse(read('deploy/gateway/spikeserve-values.yaml')) as unknown;
const merged = coalesce(chartDefaults, gatewayValues);

describe('Gateway API inference extension example', () => {
  it('its values for the chart validate against the chart schema', () => {
    const schema = JSON.parse(read('deploy/helm/spikeserve/values.schema.json')) as object;
    expect(schemaErrors(schema, merged)).toEqual([]);
    expect(FLAGS.find((f) => f.flag === 'metrics-compat')?.choices).toContain(at(merged, 'server.metricsCompat'));
    expect(at(merged, 'prefixSnapshots.existingClaim')).not.toBe(''); // the replicas share a snapshot volume
  });

  it('the InferencePool, picker, configuration and route fit the chart’s pods and the server’s metrics', async () => {
    const docs = docsOf(read('deploy/gateway/inferencepool.yaml'));
    expect(docs.map((d) => d['kind']).sort()).toEqual(['ConfigMap', 'Deployment', 'HTTPRoute', 'InferencePool', 'Role', 'RoleBinding', 'Service', 'ServiceAccount']);
    expect(gatewayErrors(docs, merged, await serverGauges())).toEqual([]);
  });

  it('the picker waits at least as long as the pool’s pods drain', () => {
    const docs = docsOf(read('deploy/gateway/inferencepool.yaml'));
    const epp = Number(at(docs.find((d) => d['kind'] === 'Deployment'), 'spec.template.spec.terminationGracePeriodSeconds'));
    // The chart's computed grace period with a snapshot folder (templates/_helpers.tpl).
    const pods = Number(at(merged, 'preStopSleepSeconds')) + Number(at(merged, 'server.drainTimeoutSeconds')) + 60 + 15;
    expect(epp).toBeGreaterThanOrEqual(pods);
  });

  it('the checker finds broken examples', async () => {
    const gauges = await serverGauges();
    const text = read('deploy/gateway/inferencepool.yaml');
    const broken = (from: string, to: string): Obj[] => {
      expect(text).toContain(from);
      return docsOf(text.replace(from, to));
    };
    expect(gatewayErrors(broken('inference-pool: spikingbrain-7b', 'inference-pool: other'), merged, gauges)).toEqual(['the pods do not carry the selected label inference-pool=other']);
    expect(gatewayErrors(broken('    - number: 8000', '    - number: 8080'), merged, gauges)).toEqual(['targetPorts [8080] do not include the server port 8000']);
    expect(gatewayErrors(broken('spikeserve:num_requests_waiting', 'spikeserve:num_requests_queued'), merged, gauges)).toEqual([
      'queuedRequestsSpec "spikeserve:num_requests_queued" is not a gauge the server exports',
    ]);
    expect(gatewayErrors(broken('            - name: spikeserve', '            - name: vllm2'), merged, gauges)).toContain(
      "no engineConfigs entry for the pods' inference.networking.k8s.io/engine-type=spikeserve",
    );
    expect(gatewayErrors(broken('            - spikingbrain-7b\n            - --pool-namespace', '            - another\n            - --pool-namespace'), merged, gauges)).toEqual([
      'the picker runs for pool another, not spikingbrain-7b',
    ]);
    expect(gatewayErrors(broken('          - pluginRef: max-score-picker', '          - pluginRef: random-picker'), merged, gauges)).toEqual(['profile plugin random-picker is not defined']);
    expect(gatewayErrors(broken('          kind: InferencePool\n          name: spikingbrain-7b', '          kind: Service\n          name: spikingbrain-7b'), merged, gauges)).toEqual([
      'no HTTPRoute sends traffic to the InferencePool',
    ]);
  });

  it('deploy/README.md documents the example, the shared snapshot volume and both ways to name the metrics', () => {
    const readme = read('deploy/README.md');
    for (const snippet of [
      'deploy/gateway/inferencepool.yaml',
      'deploy/gateway/spikeserve-values.yaml',
      'prefixSnapshots.existingClaim',
      'ReadWriteMany',
      'engineConfigs',
      '--metrics-compat vllm',
      '--total-queued-requests-metric',
      'spikeserve:kv_cache_usage_perc',
    ]) {
      expect(readme, snippet).toContain(snippet);
    }
  });
});
