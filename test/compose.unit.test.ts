/**
 * Static checks of docker-compose.yml and every file it builds, mounts or points at. No Docker
 * engine runs where the tests do, so this is what keeps the compose stack honest: each check is a
 * small function that returns the problems it finds. It runs against the repository, and against
 * broken copies (the compose file edited in memory, or files replaced or removed) to show that it
 * does catch what it is there for.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, posix, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse, parseDocument } from 'yaml';
import { loadConfig, type Config } from '../src/app/config.js';

// Service names the checks look for.
const APP = 'app';
const PRIMARY = 'primary';
const PROMETHEUS = 'prometheus';
const GRAFANA = 'grafana';
const COLLECTOR = 'otel-collector';
const K6 = 'k6';

// ---------------------------------------------------------------------------------------------
// Reading the repository

/** Files of the repository, addressed by paths relative to its root (as compose writes them). */
interface Repo {
  exists(path: string): boolean;
  isDirectory(path: string): boolean;
  read(path: string): string;
  list(dir: string): string[];
}

function diskRepo(rootDir: string): Repo {
  const abs = (path: string) => join(rootDir, path);
  return {
    exists: (path) => existsSync(abs(path)),
    isDirectory: (path) => existsSync(abs(path)) && statSync(abs(path)).isDirectory(),
    read: (path) => readFileSync(abs(path), 'utf8'),
    list: (dir) => readdirSync(abs(dir)),
  };
}

/** The repository with some files replaced (a string) or removed (null). */
function withFiles(repo: Repo, overrides: Record<string, string | null>): Repo {
  const override = (path: string) => overrides[posix.normalize(path)];
  return {
    exists: (path) => (override(path) === undefined ? repo.exists(path) : override(path) !== null),
    isDirectory: (path) => override(path) === undefined && repo.isDirectory(path),
    read: (path) => {
      const text = override(path);
      if (text === null) throw new Error(`${path} was removed`);
      return text ?? repo.read(path);
    },
    list: (dir) => repo.list(dir).filter((name) => override(posix.join(dir, name)) !== null),
  };
}

type Dict = Record<string, unknown>;
const isDict = (value: unknown): value is Dict =>
  typeof value === 'object' && value !== null && !Array.isArray(value);
const dict = (value: unknown): Dict => (isDict(value) ? value : {});
const list = (value: unknown): unknown[] => (Array.isArray(value) ? value : []);
const str = (value: unknown): string | undefined =>
  typeof value === 'string'
    ? value
    : typeof value === 'number' || typeof value === 'boolean'
      ? String(value)
      : undefined;

/** Parses a YAML file of the repository, or records why it can't. */
function readYaml(repo: Repo, path: string, problems: string[]): Dict | undefined {
  if (!repo.exists(path)) {
    problems.push(`${path} does not exist`);
    return undefined;
  }
  try {
    const value: unknown = parse(repo.read(path));
    if (isDict(value)) return value;
    problems.push(`${path} is not a YAML mapping`);
  } catch (error) {
    problems.push(`${path} does not parse: ${String(error)}`);
  }
  return undefined;
}

interface Stack {
  compose: Dict;
  repo: Repo;
}

const services = (compose: Dict): [string, Dict][] =>
  Object.entries(dict(compose.services)).map(([name, service]) => [name, dict(service)]);
const service = (compose: Dict, name: string): Dict | undefined => {
  const found = dict(compose.services)[name];
  return isDict(found) ? found : undefined;
};

interface Mount {
  source: string;
  target: string;
  bind: boolean;
}

/** A service's volumes, short (`./src:/dst:ro`, `name:/dst`) or long syntax. */
function mounts(svc: Dict): Mount[] {
  return list(svc.volumes).flatMap((entry): Mount[] => {
    if (typeof entry === 'string') {
      const [source = '', target] = entry.split(':');
      if (target === undefined) return []; // an anonymous volume
      return [{ source, target, bind: /^[./~]/.test(source) }];
    }
    const long = dict(entry);
    const source = str(long.source);
    const target = str(long.target);
    if (source === undefined || target === undefined) return [];
    return [{ source, target, bind: long.type === 'bind' }];
  });
}

/** The repository path that a container path of `svc` comes from, through its bind mounts. */
function hostPath(svc: Dict, containerPath: string): string | undefined {
  let best: { source: string; target: string } | undefined;
  for (const mount of mounts(svc)) {
    const target = mount.target.replace(/\/+$/, '');
    if (!mount.bind || (containerPath !== target && !containerPath.startsWith(`${target}/`))) {
      continue;
    }
    if (best === undefined || target.length > best.target.length) {
      best = { source: mount.source, target };
    }
  }
  if (best === undefined) return undefined;
  return posix.normalize(posix.join(best.source, containerPath.slice(best.target.length)));
}

function envFiles(svc: Dict): string[] {
  const files = Array.isArray(svc.env_file) ? svc.env_file : [svc.env_file];
  return files
    .map((file) => str(file) ?? str(dict(file).path))
    .filter((file) => file !== undefined)
    .map((file) => posix.normalize(file));
}

/** The environment a service's container gets: its env_file(s), then `environment`. */
function serviceEnv(svc: Dict, repo: Repo): Record<string, string> {
  const env: Record<string, string> = {};
  const assign = (line: string) => {
    const match = /^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (match?.[1] !== undefined && match[2] !== undefined) env[match[1]] = match[2];
  };
  for (const file of envFiles(svc)) {
    if (repo.exists(file)) repo.read(file).split('\n').forEach(assign);
  }
  if (Array.isArray(svc.environment)) {
    svc.environment.map(str).forEach((line) => line !== undefined && assign(line));
  } else {
    for (const [key, value] of Object.entries(dict(svc.environment))) {
      const text = str(value); // a bare `KEY:` passes the host's value through: unknown here
      if (text !== undefined) env[key] = text;
    }
  }
  return env;
}

/** `command` or `entrypoint` as an argument list. */
const args = (value: unknown): string[] =>
  typeof value === 'string'
    ? value.trim().split(/\s+/)
    : list(value)
        .map(str)
        .filter((arg) => arg !== undefined);

const flagValue = (argv: string[], flag: string): string | undefined =>
  argv.find((arg) => arg.startsWith(`${flag}=`))?.slice(flag.length + 1);

/** `host:port` or a URL, split into its host and port. */
function endpoint(value: string): { host: string; port: string; path: string } {
  if (value.includes('://')) {
    const url = new URL(value);
    return { host: url.hostname, port: url.port, path: url.pathname };
  }
  const colon = value.lastIndexOf(':');
  return colon < 0
    ? { host: value, port: '', path: '' }
    : { host: value.slice(0, colon), port: value.slice(colon + 1), path: '' };
}

function healthcheckProblem(svc: Dict): string | undefined {
  if (!isDict(svc.healthcheck)) return 'has no healthcheck';
  const { test, disable } = svc.healthcheck;
  if (disable === true) return 'disables its healthcheck';
  if (typeof test === 'string') return test.trim() === '' ? 'has an empty healthcheck' : undefined;
  if (!Array.isArray(test) || test.length < 2) {
    return 'needs a healthcheck test ["CMD", ...] or ["CMD-SHELL", "..."]';
  }
  if (!test.every((item) => typeof item === 'string')) {
    return 'has healthcheck test items that are not strings (an unquoted ": " makes YAML read a mapping)';
  }
  if (test[0] !== 'CMD' && test[0] !== 'CMD-SHELL') {
    return `has a healthcheck test starting with ${String(test[0])}, not CMD or CMD-SHELL`;
  }
  return undefined;
}

/** A one-shot service (k6) runs to completion: it says so with `restart: 'no'`. */
const isOneShot = (svc: Dict): boolean => svc.restart === 'no';

/** A tag that names a version (`18.4`, `v3.14.0`, `1.37.0-musl`) or a digest. */
function pinProblem(image: string): string | undefined {
  if (image.includes('@sha256:')) return undefined;
  const slash = image.lastIndexOf('/');
  const colon = image.lastIndexOf(':');
  if (colon <= slash) return `image ${image} has no tag`;
  const tag = image.slice(colon + 1);
  return /\d+\.\d+/.test(tag) ? undefined : `image ${image} is not pinned to a version`;
}

/** `-c name=value` settings on a postgres command line. */
function pgSettings(command: unknown): Map<string, string> {
  const argv = args(command);
  const settings = new Map<string, string>();
  argv.forEach((arg, index) => {
    const setting =
      arg === '-c' ? argv[index + 1] : arg.startsWith('--') ? arg.slice(2) : undefined;
    const eq = setting?.indexOf('=') ?? -1;
    if (setting !== undefined && eq > 0) settings.set(setting.slice(0, eq), setting.slice(eq + 1));
  });
  return settings;
}

/** The app's configuration, through the same schema the service reads its environment with. */
function appConfig({ compose, repo }: Stack, problems: string[]): Config | undefined {
  const app = service(compose, APP);
  if (app === undefined) {
    problems.push(`there is no "${APP}" service`);
    return undefined;
  }
  try {
    return loadConfig(serviceEnv(app, repo));
  } catch (error) {
    problems.push(`the ${APP} service's environment fails loadConfig: ${String(error)}`);
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Dockerfiles

interface Instruction {
  keyword: string;
  args: string;
}

function instructions(text: string): Instruction[] {
  return text
    .replace(/\\\r?\n/g, ' ')
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => {
      const [keyword = '', ...rest] = line.split(/\s+/);
      return { keyword: keyword.toUpperCase(), args: rest.join(' ') };
    });
}

/** Whether a .dockerignore (patterns in order, `!` re-includes, parents count) excludes `path`. */
function dockerIgnores(patterns: string[], path: string): boolean {
  const toRegExp = (glob: string) => {
    const part = (text: string) =>
      text
        .replace(/[.+^${}()|[\]\\]/g, '\\$&')
        .replace(/\*/g, '[^/]*')
        .replace(/\?/g, '[^/]');
    return new RegExp(`^${glob.split('**').map(part).join('.*')}$`);
  };
  const segments = posix.normalize(path).split('/');
  const candidates = segments.map((_, index) => segments.slice(0, index + 1).join('/'));
  let ignored = false;
  for (const raw of patterns) {
    const negated = raw.startsWith('!');
    const pattern = posix.normalize((negated ? raw.slice(1) : raw).replace(/^\/+/, ''));
    if (candidates.some((candidate) => toRegExp(pattern).test(candidate))) ignored = !negated;
  }
  return ignored;
}

// ---------------------------------------------------------------------------------------------
// The checks

/** Every bind-mounted host path and env_file exists; named volumes are declared. */
function checkHostPaths({ compose, repo }: Stack): string[] {
  const problems: string[] = [];
  const declared = dict(compose.volumes);
  for (const [name, svc] of services(compose)) {
    for (const mount of mounts(svc)) {
      if (!mount.bind) {
        if (!(mount.source in declared)) {
          problems.push(`${name}: named volume "${mount.source}" is not declared under volumes`);
        }
      } else if (/^[/~]/.test(mount.source)) {
        problems.push(
          `${name}: host path ${mount.source} is absolute; use a path in the repository`,
        );
      } else if (!repo.exists(posix.normalize(mount.source))) {
        problems.push(`${name}: mounted host path ${mount.source} does not exist`);
      }
    }
    for (const file of envFiles(svc)) {
      if (!repo.exists(file)) problems.push(`${name}: env_file ${file} does not exist`);
    }
  }
  return problems;
}

/** Images not built here are pinned to a version. */
function checkImagesPinned({ compose }: Stack): string[] {
  return services(compose).flatMap(([name, svc]) => {
    if (svc.build !== undefined) return [];
    const image = str(svc.image);
    const problem = image === undefined ? 'has neither image nor build' : pinProblem(image);
    return problem === undefined ? [] : [`${name}: ${problem}`];
  });
}

/**
 * Every image built here: the Dockerfile exists, is multi-stage, pins its base images, runs its
 * final stage as a non-root USER, and copies only files that exist and .dockerignore lets through.
 */
function checkDockerfiles({ compose, repo }: Stack): string[] {
  const problems: string[] = [];
  for (const [name, svc] of services(compose)) {
    if (svc.build === undefined) continue;
    const build = typeof svc.build === 'string' ? { context: svc.build } : dict(svc.build);
    const context = posix.normalize(str(build.context) ?? '.');
    const file = posix.join(context, str(build.dockerfile) ?? 'Dockerfile');
    if (!repo.exists(file)) {
      problems.push(`${name}: Dockerfile ${file} does not exist`);
      continue;
    }
    const ignoreFile = posix.join(context, '.dockerignore');
    const ignore = repo.exists(ignoreFile)
      ? repo
          .read(ignoreFile)
          .split('\n')
          .map((line) => line.trim())
          .filter((line) => line !== '' && !line.startsWith('#'))
      : [];
    const steps = instructions(repo.read(file));
    const stages: string[] = [];
    let finalUser: string | undefined;
    for (const step of steps) {
      const words = step.args.split(/\s+/).filter((word) => !word.startsWith('--'));
      if (step.keyword === 'FROM') {
        const [image = '', as, stage] = words;
        if (!stages.includes(image)) {
          const problem = pinProblem(image);
          if (problem !== undefined) problems.push(`${name}: ${file}: ${problem}`);
        }
        stages.push(as?.toUpperCase() === 'AS' && stage !== undefined ? stage : '');
        finalUser = undefined;
      } else if (step.keyword === 'USER') {
        finalUser = words[0]?.split(':')[0];
      } else if (
        (step.keyword === 'COPY' || step.keyword === 'ADD') &&
        !/--from=/.test(step.args)
      ) {
        for (const source of words.slice(0, -1)) {
          const path = posix.join(context, source);
          if (/[*?[]/.test(source)) continue;
          if (!repo.exists(path)) {
            problems.push(`${name}: ${file} copies ${source}, which does not exist`);
          } else if (dockerIgnores(ignore, posix.relative(context, path) || '.')) {
            problems.push(`${name}: ${file} copies ${source}, which ${ignoreFile} leaves out`);
          }
        }
      }
    }
    if (stages.length < 2) problems.push(`${name}: ${file} is not a multi-stage build`);
    if (finalUser === undefined) {
      problems.push(`${name}: the final stage of ${file} sets no USER (it would run as root)`);
    } else if (finalUser === 'root' || finalUser === '0') {
      problems.push(`${name}: the final stage of ${file} runs as root`);
    }
  }
  return problems;
}

/**
 * The app's environment passes loadConfig, names servers that exist in compose with the primary's
 * credentials, listens beyond loopback, and its healthcheck probes the port it listens on.
 */
function checkAppEnvironment(stack: Stack): string[] {
  const problems: string[] = [];
  const config = appConfig(stack, problems);
  const app = service(stack.compose, APP);
  if (config === undefined || app === undefined) return problems;
  if (config.REPLIKIT_PRIMARY_URL === undefined || config.REPLIKIT_REPLICA_URLS === undefined) {
    return ['the app would start the embedded local stack: set both REPLIKIT_*_URL variables'];
  }
  const primaryHost = new URL(config.REPLIKIT_PRIMARY_URL).hostname;
  const primary = service(stack.compose, primaryHost);
  const primaryEnv = primary === undefined ? {} : serviceEnv(primary, stack.repo);
  const urls = [
    { label: 'REPLIKIT_PRIMARY_URL', url: config.REPLIKIT_PRIMARY_URL },
    ...config.REPLIKIT_REPLICA_URLS.map(({ name, url }) => ({ label: `replica ${name}`, url })),
  ];
  for (const { label, url } of urls) {
    const parsed = new URL(url);
    if (service(stack.compose, parsed.hostname) === undefined) {
      problems.push(`${label} names host ${parsed.hostname}, which is not a compose service`);
    }
    const user = decodeURIComponent(parsed.username);
    const password = decodeURIComponent(parsed.password);
    if (user !== primaryEnv.POSTGRES_USER || password !== primaryEnv.POSTGRES_PASSWORD) {
      problems.push(`${label} credentials differ from ${primaryHost}'s POSTGRES_USER/PASSWORD`);
    }
  }
  const replicaHosts = config.REPLIKIT_REPLICA_URLS.map(({ url }) => new URL(url).hostname);
  if (replicaHosts.includes(primaryHost)) problems.push('a replica URL names the primary');
  if (['127.0.0.1', 'localhost', '::1'].includes(config.HOST)) {
    problems.push(`HOST=${config.HOST}: the app would be unreachable from other containers`);
  }
  const probe = list(dict(app.healthcheck).test).map(String).join(' ');
  if (!probe.includes(`:${config.PORT}/`)) {
    problems.push(`the ${APP} healthcheck does not probe PORT ${config.PORT}`);
  }
  return problems;
}

/** Prometheus scrapes the app at its service name, PORT and /metrics every 5 s, keeps exemplars
 * and accepts remote write (from k6). */
function checkPrometheus(stack: Stack): string[] {
  const problems: string[] = [];
  const prometheus = service(stack.compose, PROMETHEUS);
  const config = appConfig(stack, problems);
  if (prometheus === undefined) return [...problems, `there is no "${PROMETHEUS}" service`];
  const argv = args(prometheus.command);
  const features = argv.flatMap((arg) => flagValue([arg], '--enable-feature')?.split(',') ?? []);
  if (!features.includes('exemplar-storage')) {
    problems.push('prometheus runs without --enable-feature=exemplar-storage');
  }
  if (!argv.includes('--web.enable-remote-write-receiver')) {
    problems.push('prometheus runs without --web.enable-remote-write-receiver (k6 writes to it)');
  }
  const configPath = flagValue(argv, '--config.file') ?? '/etc/prometheus/prometheus.yml';
  const file = hostPath(prometheus, configPath);
  if (file === undefined) return [...problems, `prometheus's ${configPath} is not mounted`];
  const prom = readYaml(stack.repo, file, problems);
  if (prom === undefined || config === undefined) return problems;
  const target = `${APP}:${config.PORT}`;
  const jobs = list(prom.scrape_configs)
    .map(dict)
    .filter((job) =>
      list(job.static_configs).some((sc) => list(dict(sc).targets).includes(target)),
    );
  if (jobs.length === 0) problems.push(`${file} has no scrape config targeting ${target}`);
  for (const job of jobs) {
    const path = str(job.metrics_path) ?? '/metrics';
    if (path !== '/metrics') problems.push(`${file} scrapes ${target} at metrics_path ${path}`);
    const interval = str(job.scrape_interval) ?? str(dict(prom.global).scrape_interval) ?? '1m';
    if (interval !== '5s') problems.push(`${file} scrapes ${target} every ${interval}, not 5s`);
  }
  return problems;
}

/** The alerting rules of the repository. */
const ALERT_RULES = 'dashboards/alerts.yml';

/**
 * Prometheus loads {@link ALERT_RULES}: its config lists rule files, each is bind-mounted from a
 * repository file that parses and has rule groups, and one of them is that file.
 */
function checkPrometheusRules(stack: Stack): string[] {
  const problems: string[] = [];
  const prometheus = service(stack.compose, PROMETHEUS);
  if (prometheus === undefined) return [`there is no "${PROMETHEUS}" service`];
  const configPath =
    flagValue(args(prometheus.command), '--config.file') ?? '/etc/prometheus/prometheus.yml';
  const file = hostPath(prometheus, configPath);
  if (file === undefined) return [`prometheus's ${configPath} is not mounted`];
  const prom = readYaml(stack.repo, file, problems);
  if (prom === undefined) return problems;
  const loaded: string[] = [];
  for (const ruleFile of list(prom.rule_files).map(str)) {
    if (ruleFile === undefined) continue;
    // Relative rule file paths are resolved against the config file's folder.
    const inContainer = posix.resolve(posix.dirname(configPath), ruleFile);
    const host = hostPath(prometheus, inContainer);
    if (host === undefined) {
      problems.push(`rule file ${inContainer} is not mounted into ${PROMETHEUS}`);
      continue;
    }
    const rules = readYaml(stack.repo, host, problems);
    if (rules === undefined) continue;
    if (list(rules.groups).length === 0) problems.push(`${host} has no rule groups`);
    loaded.push(host);
  }
  if (!loaded.includes(ALERT_RULES)) problems.push(`${file} does not load ${ALERT_RULES}`);
  return problems;
}

/**
 * Grafana's provisioning is mounted and parses; datasources name compose services; exemplars link
 * to a provisioned trace datasource; every dashboard provider's path is a mounted host folder.
 */
function checkGrafana({ compose, repo }: Stack): string[] {
  const problems: string[] = [];
  const grafana = service(compose, GRAFANA);
  if (grafana === undefined) return [`there is no "${GRAFANA}" service`];
  const dir = hostPath(grafana, '/etc/grafana/provisioning');
  if (dir === undefined || !repo.isDirectory(dir)) {
    return ['/etc/grafana/provisioning is not a mounted host folder'];
  }
  const filesIn = (sub: string) => {
    const path = posix.join(dir, sub);
    if (!repo.isDirectory(path)) return [];
    return repo
      .list(path)
      .filter((name) => /\.ya?ml$/.test(name))
      .map((name) => posix.join(path, name));
  };
  const datasources = filesIn('datasources')
    .map((file) => readYaml(repo, file, problems))
    .flatMap((doc) => list(doc?.datasources).map(dict));
  const providers = filesIn('dashboards')
    .map((file) => readYaml(repo, file, problems))
    .flatMap((doc) => list(doc?.providers).map(dict));
  if (datasources.length === 0) problems.push(`${dir}/datasources provisions no datasource`);
  if (providers.length === 0) problems.push(`${dir}/dashboards provisions no dashboard provider`);

  const typeByUid = new Map(datasources.map((ds) => [str(ds.uid), str(ds.type)]));
  for (const ds of datasources) {
    const url = str(ds.url);
    if (url !== undefined && service(compose, new URL(url).hostname) === undefined) {
      problems.push(`datasource ${String(ds.name)} points at ${url}, not a compose service`);
    }
  }
  const links = datasources
    .filter((ds) => ds.type === 'prometheus')
    .flatMap((ds) => list(dict(ds.jsonData).exemplarTraceIdDestinations).map(dict));
  if (!links.some((link) => link.name === 'trace_id')) {
    problems.push('no Prometheus datasource links the exemplar label trace_id to traces');
  }
  for (const link of links) {
    const type = typeByUid.get(str(link.datasourceUid));
    if (type === undefined || !['jaeger', 'tempo', 'zipkin'].includes(type)) {
      problems.push(`exemplar datasourceUid ${String(link.datasourceUid)} is no trace datasource`);
    }
  }
  for (const provider of providers) {
    const path = str(dict(provider.options).path);
    if (path === undefined) continue;
    const host = hostPath(grafana, path);
    if (host === undefined) {
      problems.push(`dashboard provider path ${path} is not inside a bind mount of ${GRAFANA}`);
    } else if (!repo.isDirectory(host)) {
      problems.push(`dashboard provider path ${path} maps to ${host}, which is not a folder`);
    }
  }
  return problems;
}

/** Every service but the one-shot ones has a well-formed healthcheck. */
function checkHealthchecks({ compose }: Stack): string[] {
  return services(compose).flatMap(([name, svc]) => {
    const problem = isOneShot(svc) ? undefined : healthcheckProblem(svc);
    return problem === undefined ? [] : [`${name} ${problem}`];
  });
}

/** Every depends_on waits for health (or for a one-shot service to finish) of a real service. */
function checkDependsOn({ compose }: Stack): string[] {
  const problems: string[] = [];
  for (const [name, svc] of services(compose)) {
    if (svc.depends_on === undefined) continue;
    if (!isDict(svc.depends_on)) {
      problems.push(`${name}: depends_on must be a mapping with a condition for each service`);
      continue;
    }
    for (const [other, spec] of Object.entries(svc.depends_on)) {
      const target = service(compose, other);
      const condition = dict(spec).condition;
      if (target === undefined) {
        problems.push(`${name} depends on ${other}, which is not a service`);
      } else if (condition === 'service_healthy') {
        if (healthcheckProblem(target) !== undefined) {
          problems.push(
            `${name} waits for ${other} to be healthy, but ${other} has no healthcheck`,
          );
        }
      } else if (condition === 'service_completed_successfully') {
        if (!isOneShot(target)) problems.push(`${name} waits for ${other} to exit; it does not`);
      } else {
        problems.push(`${name} depends on ${other} with condition ${String(condition)}`);
      }
    }
  }
  return problems;
}

/** k6 only runs under the `load` profile and writes its results into the Prometheus service. */
function checkK6({ compose, repo }: Stack): string[] {
  const k6 = service(compose, K6);
  if (k6 === undefined) return [`there is no "${K6}" service`];
  const problems: string[] = [];
  if (!list(k6.profiles).includes('load')) problems.push('k6 is not under the "load" profile');
  const env = serviceEnv(k6, repo);
  const url = env.K6_PROMETHEUS_RW_SERVER_URL;
  if (url === undefined) {
    problems.push('k6 has no K6_PROMETHEUS_RW_SERVER_URL');
  } else {
    const { host, path } = endpoint(url);
    if (host !== PROMETHEUS) problems.push(`k6 remote-writes to ${host}, not ${PROMETHEUS}`);
    if (path !== '/api/v1/write') problems.push(`k6 remote-writes to ${path}, not /api/v1/write`);
  }
  if (env.K6_PROMETHEUS_RW_TREND_STATS === undefined) {
    problems.push('k6 has no K6_PROMETHEUS_RW_TREND_STATS');
  }
  const argv = args(k6.command);
  if (!argv.includes('experimental-prometheus-rw')) {
    problems.push('k6 does not run with -o experimental-prometheus-rw');
  }
  // `docker compose run k6 run /load/k6/sagas.ts` replaces the command: K6_OUT keeps the output.
  if (!(env.K6_OUT ?? '').split(',').includes('experimental-prometheus-rw')) {
    problems.push(
      'k6 has no K6_OUT=experimental-prometheus-rw for scripts given on the command line',
    );
  }
  // The script it runs by default is in the repository, through the load/ mount.
  const script = argv.findLast((arg) => /\.[jt]s$/.test(arg));
  if (script === undefined) {
    problems.push('k6 runs no script by default');
  } else {
    const file = hostPath(k6, script);
    if (file === undefined) problems.push(`k6's script ${script} is not mounted`);
    else if (!repo.exists(file)) problems.push(`k6's script ${script} (${file}) does not exist`);
  }
  const base = env.BASE_URL;
  if (base === undefined) {
    problems.push('k6 has no BASE_URL');
  } else if (endpoint(base).host !== APP) {
    problems.push(`k6 sends its load to ${endpoint(base).host}, not ${APP}`);
  }
  return problems;
}

/**
 * The collector's config is mounted, every pipeline component it names is defined, its trace
 * exporters name compose services, and the app sends OTLP/HTTP to the collector's HTTP port.
 */
function checkCollector(stack: Stack): string[] {
  const problems: string[] = [];
  const collector = service(stack.compose, COLLECTOR);
  if (collector === undefined) return [`there is no "${COLLECTOR}" service`];
  const configPath =
    flagValue(args(collector.command), '--config') ?? '/etc/otelcol-contrib/config.yaml';
  const file = hostPath(collector, configPath);
  if (file === undefined) return [`the collector's ${configPath} is not mounted`];
  const config = readYaml(stack.repo, file, problems);
  if (config === undefined) return problems;

  const serviceSection = dict(config.service);
  for (const name of list(serviceSection.extensions).map(String)) {
    if (!(name in dict(config.extensions))) problems.push(`${file}: extension ${name} not defined`);
  }
  const pipelines = Object.entries(dict(serviceSection.pipelines));
  for (const [pipeline, spec] of pipelines) {
    for (const kind of ['receivers', 'processors', 'exporters']) {
      for (const name of list(dict(spec)[kind]).map(String)) {
        if (!(name in dict(config[kind]))) {
          problems.push(`${file}: pipeline ${pipeline} uses ${kind} ${name}, which is not defined`);
        }
      }
    }
  }
  const traces = pipelines.filter(([pipeline]) => pipeline.split('/')[0] === 'traces');
  if (traces.length === 0) problems.push(`${file} has no traces pipeline`);
  for (const [, spec] of traces) {
    for (const name of list(dict(spec).exporters).map(String)) {
      const target = str(dict(dict(config.exporters)[name]).endpoint);
      if (target === undefined) continue;
      const { host } = endpoint(target);
      if (service(stack.compose, host) === undefined || host === COLLECTOR) {
        problems.push(`exporter ${name} sends to ${host}, which is not another compose service`);
      }
    }
  }

  const appEnvConfig = appConfig(stack, problems);
  const otlp = appEnvConfig?.OTEL_EXPORTER_OTLP_ENDPOINT;
  const httpEndpoint = str(dict(dict(dict(dict(config.receivers).otlp).protocols).http).endpoint);
  if (appEnvConfig !== undefined && otlp === undefined) {
    problems.push('the app has no OTEL_EXPORTER_OTLP_ENDPOINT');
  } else if (otlp !== undefined) {
    const { host, port } = endpoint(otlp);
    if (host !== COLLECTOR) problems.push(`the app sends OTLP to ${host}, not ${COLLECTOR}`);
    const receiverPort = httpEndpoint === undefined ? '4318' : endpoint(httpEndpoint).port;
    if ((port || '4318') !== receiverPort) {
      problems.push(
        `the app sends OTLP to port ${port}; the collector's HTTP receiver is on ${receiverPort}`,
      );
    }
  }
  return problems;
}

/**
 * PostgreSQL 18 data volumes sit at /var/lib/postgresql; the primary has the settings replikit
 * needs; each replica has a slot made by the primary's init scripts, waits for the primary, and
 * sets the max_* settings a standby needs at least as high as its primary's.
 */
function checkPostgres({ compose, repo }: Stack): string[] {
  const problems: string[] = [];
  for (const [name, svc] of services(compose)) {
    const major = Number(/^postgres:(\d+)/.exec(str(svc.image) ?? '')?.[1] ?? 0);
    if (major < 18) continue;
    const all = mounts(svc);
    if (all.some((mount) => mount.target.replace(/\/+$/, '') === '/var/lib/postgresql/data')) {
      problems.push(
        `${name}: PostgreSQL ${major} images keep data under /var/lib/postgresql/${major}`,
      );
    }
    if (!all.some((mount) => !mount.bind && mount.target === '/var/lib/postgresql')) {
      problems.push(`${name}: no named volume at /var/lib/postgresql (data would be lost)`);
    }
  }
  const primary = service(compose, PRIMARY);
  if (primary === undefined) return [...problems, `there is no "${PRIMARY}" service`];
  const settings = pgSettings(primary.command);
  const required = {
    wal_level: 'logical',
    hot_standby: 'on',
    hot_standby_feedback: 'on',
    track_commit_timestamp: 'on',
  };
  for (const [key, value] of Object.entries(required)) {
    if (settings.get(key) !== value) problems.push(`${PRIMARY} must run with ${key}=${value}`);
  }
  if (!(Number(settings.get('max_prepared_transactions')) > 0)) {
    problems.push(`${PRIMARY} must run with max_prepared_transactions > 0 (two-phase commit)`);
  }

  const initScripts = mounts(primary)
    .filter((mount) => mount.bind && mount.target.startsWith('/docker-entrypoint-initdb.d'))
    .map((mount) => posix.normalize(mount.source))
    .filter((path) => repo.exists(path))
    .map((path) => repo.read(path))
    .join('\n');
  const replicas = services(compose).filter(([, svc]) => serviceEnv(svc, repo).REPLICA_SLOT);
  if (replicas.length === 0) problems.push('no service is a replica (none sets REPLICA_SLOT)');
  if (Number(settings.get('max_replication_slots') ?? 10) < replicas.length) {
    problems.push(`${PRIMARY}'s max_replication_slots is below the number of replicas`);
  }
  for (const [name, svc] of replicas) {
    const slot = serviceEnv(svc, repo).REPLICA_SLOT ?? '';
    if (!initScripts.includes(`pg_create_physical_replication_slot('${slot}')`)) {
      problems.push(`${name}: no init script of ${PRIMARY} creates its slot ${slot}`);
    }
    if (dict(dict(svc.depends_on)[PRIMARY]).condition !== 'service_healthy') {
      problems.push(`${name} does not wait for ${PRIMARY} to be healthy`);
    }
    const own = pgSettings(svc.command);
    for (const key of ['max_prepared_transactions', 'max_wal_senders', 'max_connections']) {
      const needed = settings.get(key);
      if (needed !== undefined && !(Number(own.get(key)) >= Number(needed))) {
        problems.push(`${name}: ${key} must be at least the primary's ${needed}`);
      }
    }
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------
// Tests

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const real: Stack = {
  repo: diskRepo(root),
  compose: dict(parse(readFileSync(join(root, 'docker-compose.yml'), 'utf8'))),
};

/** A copy of the stack with the compose file edited and some repository files replaced. */
function broken(edit: (compose: Dict) => void, files: Record<string, string | null> = {}): Stack {
  const compose = structuredClone(real.compose);
  edit(compose);
  return { compose, repo: withFiles(real.repo, files) };
}

/** The stack with one file's text changed; throws if `from` is not in it (a vacuous test). */
function editFile(path: string, from: string | RegExp, to: string): Stack {
  const text = real.repo.read(path);
  const changed = text.replace(from, to);
  if (changed === text) throw new Error(`${String(from)} not found in ${path}`);
  return broken(() => undefined, { [path]: changed });
}

/** A service of an edited compose file, for editing; throws if it is missing. */
function svcOf(compose: Dict, name: string): Dict {
  const found = service(compose, name);
  if (found === undefined) throw new Error(`no service ${name}`);
  return found;
}
const envOf = (compose: Dict, name: string): Dict => dict(svcOf(compose, name).environment);

interface Breakage {
  why: string;
  stack: () => Stack;
  problem: RegExp;
}

const checks: { name: string; check: (stack: Stack) => string[]; breakages: Breakage[] }[] = [
  {
    name: 'bind mounts and env files exist',
    check: checkHostPaths,
    breakages: [
      {
        why: 'a mounted file is missing',
        stack: () => broken(() => undefined, { 'docker/prometheus/prometheus.yml': null }),
        problem: /prometheus: mounted host path .*prometheus\.yml does not exist/,
      },
      {
        why: 'an env_file is missing',
        stack: () => broken(() => undefined, { 'docker/postgres/postgres.env': null }),
        problem: /env_file docker\/postgres\/postgres\.env does not exist/,
      },
      {
        why: 'a named volume is not declared',
        stack: () => broken((c) => delete dict(c.volumes)['prometheus-data']),
        problem: /named volume "prometheus-data" is not declared/,
      },
      {
        why: 'a host path is absolute',
        stack: () => broken((c) => list(svcOf(c, GRAFANA).volumes).push('/etc/hosts:/x:ro')),
        problem: /host path \/etc\/hosts is absolute/,
      },
    ],
  },
  {
    name: 'images are pinned',
    check: checkImagesPinned,
    breakages: [
      {
        why: 'an image is :latest',
        stack: () => broken((c) => (svcOf(c, GRAFANA).image = 'grafana/grafana:latest')),
        problem: /grafana: image grafana\/grafana:latest is not pinned/,
      },
      {
        why: 'an image has no tag',
        stack: () => broken((c) => (svcOf(c, PROMETHEUS).image = 'prom/prometheus')),
        problem: /image prom\/prometheus has no tag/,
      },
    ],
  },
  {
    name: 'Dockerfiles are multi-stage, pinned, non-root and copy what exists',
    check: checkDockerfiles,
    breakages: [
      {
        why: 'the Dockerfile is missing',
        stack: () => broken(() => undefined, { Dockerfile: null }),
        problem: /app: Dockerfile Dockerfile does not exist/,
      },
      {
        why: 'it has a single stage',
        stack: () =>
          broken(() => undefined, { Dockerfile: 'FROM node:22.22.2-bookworm-slim\nUSER node\n' }),
        problem: /is not a multi-stage build/,
      },
      {
        why: 'the final stage sets no USER',
        stack: () => editFile('Dockerfile', /^USER node\n/m, ''),
        problem: /final stage of Dockerfile sets no USER/,
      },
      {
        why: 'the final stage runs as root',
        stack: () => editFile('Dockerfile', /^USER node$/m, 'USER root'),
        problem: /final stage of Dockerfile runs as root/,
      },
      {
        why: 'the collector image ends as root',
        stack: () => editFile('docker/otel-collector/Dockerfile', /^USER 10001$/m, 'USER 0:0'),
        problem: /otel-collector: the final stage .* runs as root/,
      },
      {
        why: 'a base image is not pinned',
        stack: () =>
          editFile('Dockerfile', /^FROM node:\S+ AS runtime$/m, 'FROM node:lts AS runtime'),
        problem: /image node:lts is not pinned/,
      },
      {
        why: 'a copied file is missing',
        stack: () => broken(() => undefined, { 'package-lock.json': null }),
        problem: /copies package-lock\.json, which does not exist/,
      },
      {
        why: '.dockerignore leaves a copied folder out',
        stack: () => editFile('.dockerignore', /^!src$/m, ''),
        problem: /copies src, which \.dockerignore leaves out/,
      },
    ],
  },
  {
    name: "the app's environment passes loadConfig and names real servers",
    check: checkAppEnvironment,
    breakages: [
      {
        why: 'a URL is not a postgres:// URL',
        stack: () => broken((c) => (envOf(c, APP).REPLIKIT_PRIMARY_URL = 'mysql://primary/x')),
        problem: /fails loadConfig: .*REPLIKIT_PRIMARY_URL/,
      },
      {
        why: 'the server URLs are missing',
        stack: () =>
          broken((c) => {
            delete envOf(c, APP).REPLIKIT_PRIMARY_URL;
            delete envOf(c, APP).REPLIKIT_REPLICA_URLS;
          }),
        problem: /would start the embedded local stack/,
      },
      {
        why: 'a replica URL names no service',
        stack: () =>
          broken((c) => {
            const env = envOf(c, APP);
            env.REPLIKIT_REPLICA_URLS = String(env.REPLIKIT_REPLICA_URLS).replace(
              '@replica2',
              '@db2',
            );
          }),
        problem: /replica replica2 names host db2, which is not a compose service/,
      },
      {
        why: 'the password differs from the primary',
        stack: () =>
          broken((c) => {
            const env = envOf(c, APP);
            env.REPLIKIT_PRIMARY_URL = String(env.REPLIKIT_PRIMARY_URL).replace(
              ':replikit@',
              ':x@',
            );
          }),
        problem: /REPLIKIT_PRIMARY_URL credentials differ/,
      },
      {
        why: 'it listens on loopback only',
        stack: () => broken((c) => delete envOf(c, APP).HOST),
        problem: /HOST=127\.0\.0\.1: the app would be unreachable/,
      },
      {
        why: 'its healthcheck probes another port',
        stack: () => broken((c) => (envOf(c, APP).PORT = '8080')),
        problem: /healthcheck does not probe PORT 8080/,
      },
    ],
  },
  {
    name: 'Prometheus scrapes the app',
    check: checkPrometheus,
    breakages: [
      {
        why: 'the app listens on another PORT',
        stack: () => broken((c) => (envOf(c, APP).PORT = '8080')),
        problem: /has no scrape config targeting app:8080/,
      },
      {
        why: 'the target names another host',
        stack: () => editFile('docker/prometheus/prometheus.yml', "'app:3000'", "'api:3000'"),
        problem: /has no scrape config targeting app:3000/,
      },
      {
        why: 'the metrics path differs',
        stack: () =>
          editFile(
            'docker/prometheus/prometheus.yml',
            'metrics_path: /metrics',
            'metrics_path: /m',
          ),
        problem: /scrapes app:3000 at metrics_path \/m/,
      },
      {
        why: 'the scrape interval is not 5s',
        stack: () =>
          editFile('docker/prometheus/prometheus.yml', /^ {4}scrape_interval: 5s\n/m, ''),
        problem: /scrapes app:3000 every 15s, not 5s/,
      },
      {
        why: 'the config does not parse',
        stack: () =>
          broken(() => undefined, { 'docker/prometheus/prometheus.yml': 'scrape_configs: [\n' }),
        problem: /prometheus\.yml does not parse/,
      },
      {
        why: 'the config is not mounted',
        stack: () =>
          broken((c) => {
            const prometheus = svcOf(c, PROMETHEUS);
            prometheus.volumes = list(prometheus.volumes).filter((v) => !String(v).startsWith('.'));
          }),
        problem: /\/etc\/prometheus\/prometheus\.yml is not mounted/,
      },
      {
        why: 'exemplar storage is off',
        stack: () =>
          broken((c) => {
            const prometheus = svcOf(c, PROMETHEUS);
            prometheus.command = args(prometheus.command).filter((a) => !a.includes('exemplar'));
          }),
        problem: /without --enable-feature=exemplar-storage/,
      },
      {
        why: 'the remote-write receiver is off',
        stack: () =>
          broken((c) => {
            const prometheus = svcOf(c, PROMETHEUS);
            prometheus.command = args(prometheus.command).filter(
              (a) => !a.includes('remote-write'),
            );
          }),
        problem: /without --web\.enable-remote-write-receiver/,
      },
    ],
  },
  {
    name: 'Prometheus loads the alert rules',
    check: checkPrometheusRules,
    breakages: [
      {
        why: 'the config lists no rule file',
        stack: () =>
          editFile('docker/prometheus/prometheus.yml', /^rule_files:\n(?: {2}- .*\n)+/m, ''),
        problem: /does not load dashboards\/alerts\.yml/,
      },
      {
        why: 'the rule file is not mounted',
        stack: () =>
          broken((c) => {
            const prometheus = svcOf(c, PROMETHEUS);
            prometheus.volumes = list(prometheus.volumes).filter(
              (v) => !String(v).includes('alerts.yml'),
            );
          }),
        problem: /rule file \/etc\/prometheus\/alerts\.yml is not mounted/,
      },
      {
        why: 'the rule file does not parse',
        stack: () => broken(() => undefined, { [ALERT_RULES]: 'groups: [\n' }),
        problem: /alerts\.yml does not parse/,
      },
      {
        why: 'the rule file has no groups',
        stack: () => broken(() => undefined, { [ALERT_RULES]: 'groups: []\n' }),
        problem: /alerts\.yml has no rule groups/,
      },
    ],
  },
  {
    name: "Grafana's provisioning parses and points at what exists",
    check: checkGrafana,
    breakages: [
      {
        why: 'a provisioning file does not parse',
        stack: () =>
          broken(() => undefined, {
            'dashboards/provisioning/datasources/datasources.yaml': 'datasources: [\n',
          }),
        problem: /datasources\.yaml does not parse/,
      },
      {
        why: 'the dashboards folder is not mounted',
        stack: () =>
          broken((c) => {
            const grafana = svcOf(c, GRAFANA);
            grafana.volumes = list(grafana.volumes).filter(
              (v) => !String(v).startsWith('./dashboards:'),
            );
          }),
        problem: /provider path \/var\/lib\/grafana\/dashboards is not inside a bind mount/,
      },
      {
        why: 'a provider path maps to a missing folder',
        stack: () =>
          editFile(
            'dashboards/provisioning/dashboards/dashboards.yaml',
            'path: /var/lib/grafana/dashboards',
            'path: /var/lib/grafana/dashboards/missing',
          ),
        problem: /maps to dashboards\/missing, which is not a folder/,
      },
      {
        why: 'the provisioning folder is not mounted',
        stack: () =>
          broken((c) => {
            const grafana = svcOf(c, GRAFANA);
            grafana.volumes = list(grafana.volumes).filter(
              (v) => !String(v).includes('provisioning'),
            );
          }),
        problem: /\/etc\/grafana\/provisioning is not a mounted host folder/,
      },
      {
        why: 'exemplars link to a datasource that does not exist',
        stack: () =>
          editFile(
            'dashboards/provisioning/datasources/datasources.yaml',
            'datasourceUid: jaeger',
            'datasourceUid: tempo',
          ),
        problem: /exemplar datasourceUid tempo is no trace datasource/,
      },
      {
        why: 'a datasource points at a host that is not a service',
        stack: () =>
          editFile(
            'dashboards/provisioning/datasources/datasources.yaml',
            'http://prometheus:9090',
            'http://prom:9090',
          ),
        problem: /points at http:\/\/prom:9090, not a compose service/,
      },
    ],
  },
  {
    name: 'every long-running service has a healthcheck',
    check: checkHealthchecks,
    breakages: [
      {
        why: 'a service has none',
        stack: () => broken((c) => delete svcOf(c, 'jaeger').healthcheck),
        problem: /^jaeger has no healthcheck$/m,
      },
      {
        why: 'a healthcheck is disabled',
        stack: () => broken((c) => (svcOf(c, PROMETHEUS).healthcheck = { disable: true })),
        problem: /prometheus disables its healthcheck/,
      },
      {
        why: 'an unquoted ": " turned a test item into a mapping',
        stack: () =>
          broken((c) => (dict(svcOf(c, APP).healthcheck).test = ['CMD', 'node', { 'a ? 0': 1 }])),
        problem: /app has healthcheck test items that are not strings/,
      },
      {
        why: 'k6 is no longer one-shot',
        stack: () => broken((c) => delete svcOf(c, K6).restart),
        problem: /^k6 has no healthcheck$/m,
      },
    ],
  },
  {
    name: 'every depends_on waits for a healthy service',
    check: checkDependsOn,
    breakages: [
      {
        why: 'depends_on is a plain list',
        stack: () => broken((c) => (svcOf(c, APP).depends_on = [PRIMARY])),
        problem: /app: depends_on must be a mapping/,
      },
      {
        why: 'a condition is service_started',
        stack: () =>
          broken((c) => (dict(svcOf(c, APP).depends_on).jaeger = { condition: 'service_started' })),
        problem: /app depends on jaeger with condition service_started/,
      },
      {
        why: 'the service waited for has no healthcheck',
        stack: () => broken((c) => delete svcOf(c, PRIMARY).healthcheck),
        problem: /replica1 waits for primary to be healthy, but primary has no healthcheck/,
      },
      {
        why: 'the service waited for does not exist',
        stack: () =>
          broken((c) => (dict(svcOf(c, APP).depends_on).cache = { condition: 'service_healthy' })),
        problem: /app depends on cache, which is not a service/,
      },
      {
        why: 'a long-running service is awaited as if it exited',
        stack: () =>
          broken(
            (c) =>
              (dict(svcOf(c, K6).depends_on).app = { condition: 'service_completed_successfully' }),
          ),
        problem: /k6 waits for app to exit; it does not/,
      },
    ],
  },
  {
    name: 'k6 runs under the load profile and writes to Prometheus',
    check: checkK6,
    breakages: [
      {
        why: 'it has no profile',
        stack: () => broken((c) => delete svcOf(c, K6).profiles),
        problem: /k6 is not under the "load" profile/,
      },
      {
        why: 'it writes to another host',
        stack: () =>
          broken(
            (c) =>
              (envOf(c, K6).K6_PROMETHEUS_RW_SERVER_URL = 'http://localhost:9090/api/v1/write'),
          ),
        problem: /k6 remote-writes to localhost, not prometheus/,
      },
      {
        why: 'it writes to another path',
        stack: () =>
          broken(
            (c) => (envOf(c, K6).K6_PROMETHEUS_RW_SERVER_URL = 'http://prometheus:9090/write'),
          ),
        problem: /k6 remote-writes to \/write, not \/api\/v1\/write/,
      },
      {
        why: 'the trend stats are not set',
        stack: () => broken((c) => delete envOf(c, K6).K6_PROMETHEUS_RW_TREND_STATS),
        problem: /no K6_PROMETHEUS_RW_TREND_STATS/,
      },
      {
        why: 'its output is not remote write',
        stack: () => broken((c) => (svcOf(c, K6).command = ['run', '/load/k6/staleness.ts'])),
        problem: /does not run with -o experimental-prometheus-rw/,
      },
      {
        why: 'a script given on the command line would not remote-write',
        stack: () => broken((c) => delete envOf(c, K6).K6_OUT),
        problem: /k6 has no K6_OUT=experimental-prometheus-rw/,
      },
      {
        why: 'its script is not in load/',
        stack: () =>
          broken(
            (c) =>
              (svcOf(c, K6).command = [
                'run',
                '-o',
                'experimental-prometheus-rw',
                '/load/staleness.ts',
              ]),
          ),
        problem: /k6's script \/load\/staleness\.ts \(load\/staleness\.ts\) does not exist/,
      },
      {
        why: 'its script is not mounted',
        stack: () => broken((c) => delete svcOf(c, K6).volumes),
        problem: /k6's script \/load\/k6\/staleness\.ts is not mounted/,
      },
      {
        why: 'it sends its load elsewhere',
        stack: () => broken((c) => (envOf(c, K6).BASE_URL = 'http://127.0.0.1:3000')),
        problem: /k6 sends its load to 127\.0\.0\.1, not app/,
      },
    ],
  },
  {
    name: 'the collector forwards to a compose service and receives from the app',
    check: checkCollector,
    breakages: [
      {
        why: 'the exporter names a host that is not a service',
        stack: () =>
          editFile(
            'docker/otel-collector/config.yaml',
            'endpoint: jaeger:4317',
            'endpoint: tempo:4317',
          ),
        problem: /exporter otlp_grpc\/jaeger sends to tempo, which is not another compose service/,
      },
      {
        why: 'a pipeline names an exporter that is not defined',
        stack: () =>
          editFile(
            'docker/otel-collector/config.yaml',
            'exporters: [otlp_grpc/jaeger]',
            'exporters: [debug]',
          ),
        problem: /pipeline traces uses exporters debug, which is not defined/,
      },
      {
        why: 'the config is not mounted',
        stack: () => broken((c) => (svcOf(c, COLLECTOR).volumes = [])),
        problem: /the collector's \/etc\/otelcol-contrib\/config\.yaml is not mounted/,
      },
      {
        why: 'the app sends OTLP elsewhere',
        stack: () =>
          broken((c) => (envOf(c, APP).OTEL_EXPORTER_OTLP_ENDPOINT = 'http://jaeger:4318')),
        problem: /the app sends OTLP to jaeger, not otel-collector/,
      },
      {
        why: 'the app sends OTLP to another port',
        stack: () =>
          broken((c) => (envOf(c, APP).OTEL_EXPORTER_OTLP_ENDPOINT = 'http://otel-collector:4317')),
        problem: /the app sends OTLP to port 4317; the collector's HTTP receiver is on 4318/,
      },
    ],
  },
  {
    name: 'the primary and replicas are set up for replication',
    check: checkPostgres,
    breakages: [
      {
        why: 'a data volume is mounted at the pre-18 path',
        stack: () =>
          broken(
            (c) => (svcOf(c, 'replica1').volumes = ['replica1-data:/var/lib/postgresql/data']),
          ),
        problem: /replica1: PostgreSQL 18 images keep data under \/var\/lib\/postgresql\/18/,
      },
      {
        why: 'the primary runs with wal_level=replica',
        stack: () =>
          broken((c) => {
            const primary = svcOf(c, PRIMARY);
            primary.command = args(primary.command).map((a) => a.replace('=logical', '=replica'));
          }),
        problem: /primary must run with wal_level=logical/,
      },
      {
        why: 'prepared transactions are off',
        stack: () =>
          broken((c) => {
            const primary = svcOf(c, PRIMARY);
            primary.command = args(primary.command).map((a) =>
              a.startsWith('max_prepared_transactions=') ? 'max_prepared_transactions=0' : a,
            );
          }),
        problem: /max_prepared_transactions > 0/,
      },
      {
        why: 'a replica allows fewer prepared transactions than the primary',
        stack: () =>
          broken((c) => {
            const replica = svcOf(c, 'replica2');
            replica.command = args(replica.command).map((a) =>
              a.startsWith('max_prepared_transactions=') ? 'max_prepared_transactions=8' : a,
            );
          }),
        problem: /replica2: max_prepared_transactions must be at least the primary's 200/,
      },
      {
        why: "no init script creates a replica's slot",
        stack: () =>
          editFile(
            'docker/postgres/primary-init.sh',
            "pg_create_physical_replication_slot('replica2')",
            "pg_create_physical_replication_slot('other')",
          ),
        problem: /replica2: no init script of primary creates its slot replica2/,
      },
      {
        why: 'a replica does not wait for the primary',
        stack: () => broken((c) => delete svcOf(c, 'replica1').depends_on),
        problem: /replica1 does not wait for primary to be healthy/,
      },
    ],
  },
];

describe('docker-compose.yml', () => {
  it('parses as YAML without errors or warnings', () => {
    const doc = parseDocument(readFileSync(join(root, 'docker-compose.yml'), 'utf8'));
    expect([...doc.errors, ...doc.warnings].map(String)).toEqual([]);
    expect(services(real.compose).map(([name]) => name)).toEqual(
      expect.arrayContaining([
        PRIMARY,
        'replica1',
        'replica2',
        APP,
        PROMETHEUS,
        GRAFANA,
        COLLECTOR,
        K6,
      ]),
    );
  });

  it('is read by a YAML parser that does report errors', () => {
    expect(parseDocument('services: [\n').errors).not.toHaveLength(0);
  });

  describe.each(checks)('$name', ({ check, breakages }) => {
    it('holds for the repository', () => {
      expect(check(real)).toEqual([]);
    });

    it.each(breakages)('fails when $why', ({ stack, problem }) => {
      expect(check(stack()).join('\n')).toMatch(problem);
    });
  });
});
