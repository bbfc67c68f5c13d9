import assert from "node:assert/strict";
import {
  busyShareQueries,
  dashboardBody,
  dashboardName,
  fromZeroQueries,
  metricQueryProblems,
  neverConnectPeriods,
  scalingProblems,
  scalingSchema,
  warmPoolSchema,
  type MetricQuery,
} from "./scaling";

const GROUP = "agentpools-git.corp-1a2b3c4d";
const DEMAND = {
  namespace: "Spacelift/Workers",
  metricName: "QueuedRuns",
  dimensions: { WorkerPool: "01ABC" },
  statistic: "Maximum" as const,
};

/** The metric math evaluated as CloudWatch would, for one period's values (FILL, MAX, IF and arithmetic only). */
function evaluate(expression: string, values: Record<string, number | undefined>): number {
  const js = expression
    .replace(/FILL\((\w+), (\d+)\)/g, (_, id, fill) => `(values.${id} ?? ${fill})`)
    .replace(/MAX\(\[([^\]]+)\]\)/g, "Math.max($1)")
    .replace(/IF\(([^,]+), ([^,]+), ([^)]+)\)/g, "(($1) ? $2 : $3)")
    .replace(/ AND /g, " && ");
  return Function("values", `return ${js}`)(values);
}

describe("scaling: the policy's metric math", () => {
  it("is the busy share in percent; with demand, each queued item counts as one more busy agent per instance in service", () => {
    const plain = busyShareQueries(GROUP);
    const load = (queries: MetricQuery[]) => (queries.find((q) => q.returnData) as { expression: string }).expression;
    assert.equal(evaluate(load(plain), { busy: 0.5 }), 50);
    assert.equal(evaluate(load(plain), {}), 0, "no data points: no load, so no scale-out from missing data");
    const withDemand = busyShareQueries(GROUP, DEMAND);
    assert.equal(evaluate(load(withDemand), { busy: 0.5, demand: 3, inservice: 2 }), 200);
    assert.equal(evaluate(load(withDemand), { busy: 1, demand: 0, inservice: 4 }), 100);
    assert.equal(
      evaluate(load(withDemand), { demand: 2 }),
      200,
      "no instance in service: the demand is not divided by zero",
    );
  });

  it("keeps AWS's rules: ids from a lower-case letter, unique, one query returning data, expressions naming defined ids", () => {
    assert.deepEqual(metricQueryProblems(busyShareQueries(GROUP)), []);
    assert.deepEqual(metricQueryProblems(busyShareQueries(GROUP, DEMAND)), []);
    assert.deepEqual(metricQueryProblems(fromZeroQueries(GROUP, DEMAND)), []);
    const base = busyShareQueries(GROUP, DEMAND);
    assert.match(
      metricQueryProblems([...base, { id: "Extra", expression: "busy", returnData: false }]).join(),
      /id "Extra" must start with a lower-case letter/,
    );
    assert.match(metricQueryProblems([...base, { ...base[0] }]).join(), /unique/);
    assert.match(metricQueryProblems(base.map((q) => ({ ...q, returnData: true }))).join(), /exactly one/);
    assert.match(
      metricQueryProblems([base[0], { id: "load", expression: "100 * FILL(queued, 0)", returnData: true }]).join(),
      /names "queued"/,
    );
  });

  it("starts a pool at zero only while work is queued and the group wants no instance", () => {
    const start = (fromZeroQueries(GROUP, DEMAND).find((q) => q.returnData) as { expression: string }).expression;
    assert.equal(evaluate(start, { demand: 1, desired: 0 }), 1);
    assert.equal(evaluate(start, { demand: 1, desired: 1 }), 0, "once one is wanted, target tracking takes over");
    assert.equal(evaluate(start, { demand: 0, desired: 0 }), 0);
    assert.equal(evaluate(start, {}), 0);
  });
});

describe("scaling: arguments", () => {
  it("defaults: scaling on, a 70% busy target, a minute's warm-up", () => {
    assert.deepEqual(scalingSchema.parse({}), { enabled: true, targetBusyPercent: 70, instanceWarmupSeconds: 60 });
  });

  it("accepts good but unusual values: a 100% target, a fractional one, a warm pool kept running and reused, demand without dimensions", () => {
    for (const targetBusyPercent of [100, 0.5, 33.3])
      assert.equal(scalingSchema.parse({ targetBusyPercent }).targetBusyPercent, targetBusyPercent);
    assert.deepEqual(warmPoolSchema.parse({ poolState: "Running", reuseOnScaleIn: true, maxPreparedCapacity: 0 }), {
      minSize: 0,
      poolState: "Running",
      reuseOnScaleIn: true,
      maxPreparedCapacity: 0,
    });
    assert.deepEqual(
      scalingSchema.parse({ demandMetric: { namespace: "AWS/SQS", metricName: "ApproximateNumberOfMessagesVisible" } })
        .demandMetric?.dimensions,
      {},
    );
    assert.deepEqual(
      scalingProblems({ minSize: 0, maxSize: 5, warmPool: warmPoolSchema.parse({ maxPreparedCapacity: 0 }) }),
      [],
    );
  });

  it("refuses a warm pool beside mixed instances (AWS allows none)", () => {
    const [problem] = scalingProblems({
      minSize: 1,
      maxSize: 3,
      mixedInstances: {},
      warmPool: warmPoolSchema.parse({}),
    });
    assert.deepEqual(problem.path, ["warmPool"]);
  });
});

describe("scaling: what shows it", () => {
  it("dashboard names keep to CloudWatch's characters; the body names the group and region in every metric widget", () => {
    assert.equal(dashboardName(GROUP), "agentpools-git-corp-1a2b3c4d");
    assert.match(dashboardName(`agentpools-${"x".repeat(300)}`), /^[A-Za-z0-9_-]{255}$/);
    const body = JSON.parse(
      dashboardBody({
        group: GROUP,
        region: "eu-west-1",
        demand: DEMAND,
        errorsMetric: `RuntimeErrors-${GROUP}`,
        alarmArns: ["arn:aws:cloudwatch:eu-west-1:123456789012:alarm:a"],
      }),
    );
    for (const widget of body.widgets) {
      assert.ok(widget.x + widget.width <= 24, "on the 24-column grid");
      if (widget.type !== "metric") continue;
      assert.equal(widget.properties.region, "eu-west-1");
      for (const metric of widget.properties.metrics) {
        const dims = metric.filter((part: unknown) => typeof part === "string");
        if (dims[0] === "agentpools" && dims.length > 2) assert.equal(dims[3], GROUP);
      }
    }
    assert.ok(JSON.stringify(body).includes('"QueuedRuns","WorkerPool","01ABC"'), "the demand with its dimensions");
  });

  it("alarms on instances that never connect only past the launch hook's timeout", () => {
    assert.equal(neverConnectPeriods(900), 20);
    assert.equal(neverConnectPeriods(7200), 125);
    assert.ok(neverConnectPeriods(7200) * 60 <= 86_400, "CloudWatch evaluates at most a day");
  });
});
