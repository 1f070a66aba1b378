import {
  collectDefaultMetrics,
  type MetricObject,
  type MetricObjectWithValues,
  type MetricValue,
  type OpenMetricsContentType,
  type PrometheusContentType,
  Registry,
} from 'prom-client';

/**
 * The service's own Prometheus registry. It is an OpenMetrics registry so that metrics can carry
 * exemplars (prom-client refuses exemplars on a Prometheus-text registry); {@link renderMetrics}
 * still serves the classic text format to scrapers that ask for it.
 */
export type MetricsRegistry = Registry<OpenMetricsContentType>;

/** Options for {@link createMetricsRegistry}. */
export interface MetricsRegistryOptions {
  /** Collect the default process and Node.js metrics (`process_cpu_user_seconds_total`, …). Default true. */
  readonly defaultMetrics?: boolean;
}

/**
 * Creates a registry of its own (never prom-client's global one, which any dependency may fill),
 * with the default process metrics under their usual, unprefixed names.
 *
 * ```ts
 * const registry = createMetricsRegistry();
 * new Counter({ name: 'replikit_reads_total', help: 'Reads served', registers: [registry] });
 * ```
 */
export function createMetricsRegistry(options: MetricsRegistryOptions = {}): MetricsRegistry {
  const registry = openMetricsRegistry();
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry });
  return registry;
}

/** The two exposition formats. */
export type MetricsFormat = 'openmetrics' | 'prometheus';

/** What {@link renderMetrics} produced. */
export interface RenderedMetrics {
  readonly contentType: OpenMetricsContentType | PrometheusContentType;
  readonly body: string;
  /** Metrics left out because collecting them failed. */
  readonly failed: readonly string[];
}

/** Options for {@link renderMetrics}. */
export interface RenderMetricsOptions {
  /** Told about each metric whose collection failed; the rest of the scrape goes on. */
  readonly onCollectError?: (metric: string, error: unknown) => void;
}

type CollectedMetric = MetricObjectWithValues<MetricValue<string>>;

/** What every prom-client metric is at run time; its type declarations leave `get` out. */
interface CollectableMetric {
  readonly name: string;
  get(): Promise<CollectedMetric>;
}

function isCollectable(metric: MetricObject): metric is MetricObject & CollectableMetric {
  return typeof (metric as { get?: unknown }).get === 'function';
}

function openMetricsRegistry(): Registry<OpenMetricsContentType> {
  // prom-client's constructor takes the content type, but its type declarations do not say so.
  const registry = new Registry<OpenMetricsContentType>();
  registry.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
  return registry;
}

/**
 * Renders `registry` in either format without changing it, and without letting one failing
 * metric fail the scrape.
 *
 * Two prom-client behaviours make this more than `registry.metrics()`: the format is a property
 * of the registry, not of the request; and rendering OpenMetrics renames counters in place
 * (`x_total` becomes `x`), which then corrupts every later Prometheus-text scrape. So each metric
 * is collected once, guarded, and written through a throwaway registry of the wanted format
 * holding read-only views.
 *
 * ```ts
 * const { contentType, body } = await renderMetrics(registry, 'openmetrics');
 * ```
 */
export async function renderMetrics(
  registry: Registry<OpenMetricsContentType> | Registry<PrometheusContentType>,
  format: MetricsFormat,
  options: RenderMetricsOptions = {},
): Promise<RenderedMetrics> {
  const metrics = registry.getMetricsAsArray().filter(isCollectable);
  const collected = await Promise.all(
    metrics.map(async (metric): Promise<CollectedMetric | undefined> => {
      try {
        return await metric.get();
      } catch (error) {
        options.onCollectError?.(metric.name, error);
        return undefined;
      }
    }),
  );

  const openMetrics = format === 'openmetrics';
  const view = openMetrics ? openMetricsRegistry() : new Registry<PrometheusContentType>();
  const failed: string[] = [];
  for (const [index, data] of collected.entries()) {
    const metric = metrics[index];
    if (metric === undefined) continue;
    if (data === undefined) {
      failed.push(metric.name);
      continue;
    }
    // OpenMetrics names a counter family without `_total` and its sample with it; prom-client
    // expects the family name here and adds the suffix itself.
    // (prom-client declares `type` as a numeric enum; at run time it is the string.)
    const counter = String(data.type) === 'counter';
    const name = openMetrics && counter ? data.name.replace(/_total$/, '') : data.name;
    const snapshot: CollectedMetric = { ...data, name };
    try {
      view.registerMetric({
        name,
        help: data.help,
        type: data.type,
        aggregator: data.aggregator,
        get: () => Promise.resolve(snapshot),
      } as unknown as Parameters<typeof view.registerMetric>[0]);
    } catch (error) {
      // Two families with one name once `_total` is dropped (a counter `x_total`, a gauge `x`).
      options.onCollectError?.(metric.name, error);
      failed.push(metric.name);
    }
  }
  return { contentType: view.contentType, body: await view.metrics(), failed };
}
