import assert from "node:assert/strict";
import { awsClient, instanceMetadata, type AwsClient } from "../agent/runtime/aws";
import { logShipper } from "../agent/runtime/cloudwatch";
import { FakeAws } from "../devkit/fake-aws";

const GROUP = "/agentpools/agentpools-git-1a2b";
const STREAM = "i-0123456789abcdef0";
const HOUR = 3_600_000;

/**
 * The log shipper against a stand-in CloudWatch Logs that holds every batch to PutLogEvents'
 * documented rules (time order, 24-hour span, sizes) and answers with the errors a test queues.
 * What is asserted is what CloudWatch ended up holding, in order.
 */
describe("log shipping to CloudWatch (against a fake AWS on loopback)", () => {
  let aws: FakeAws;
  let client: AwsClient;
  const realNow = Date.now;

  beforeEach(async () => {
    aws = new FakeAws();
    const base = await aws.start();
    const env = aws.env(base);
    const imds = instanceMetadata(env);
    client = awsClient("eu-west-1", "amazonaws.com", () => imds.credentials(), env, 1);
  });
  afterEach(async () => {
    Date.now = realNow;
    await aws.stop();
  });

  const stored = () => (aws.streams.get(STREAM) ?? []).map((e) => e.message);
  const shipper = () => logShipper(client, GROUP, STREAM, 1);
  const lines = (from: number, count: number) => Array.from({ length: count }, (_, i) => `line ${from + i}`);

  it("a batch that failed does not stop the ones after it", async () => {
    const logs = shipper();
    logs.push("before");
    await logs.flush();
    // Five 500s: more than the client's own four attempts, so this flush fails as a whole.
    aws.fail("Logs_20140328.PutLogEvents", 5, { status: 500, code: "InternalFailure" });
    logs.push("during the outage");
    await logs.flush();
    assert.deepEqual(stored(), ["before"]);
    logs.push("after");
    await logs.stop();
    assert.deepEqual(stored(), ["before", "during the outage", "after"], "held, then delivered in order");
  });

  it("lines dropped from a full buffer are said where they were lost, in time order CloudWatch accepts", async () => {
    const logs = shipper();
    let now = realNow();
    Date.now = () => now;
    for (const line of lines(0, 10_005)) {
      logs.push(line);
      now += 1;
    }
    await logs.stop();
    const messages = stored();
    assert.equal(messages.length, 10_001);
    assert.deepEqual(JSON.parse(messages[0]), {
      time: new Date(now - 10_000).toISOString(),
      level: "warn",
      msg: "log lines dropped",
      count: 5,
      reason: "buffer full",
    });
    assert.equal(messages[1], "line 5");
    assert.equal(messages.at(-1), "line 10004");
    assert.deepEqual(aws.rejected, []);
  });

  it("a batch never spans more than 24 hours", async () => {
    const logs = shipper();
    const start = realNow() - 30 * HOUR;
    Date.now = () => start;
    logs.push("a day and more ago");
    Date.now = () => start + 25 * HOUR;
    logs.push("an hour ago");
    Date.now = realNow;
    await logs.stop();
    assert.deepEqual(stored(), ["a day and more ago", "an hour ago"]);
    assert.equal(aws.callsOf("Logs_20140328.PutLogEvents").length, 2, "two batches");
  });

  it("an event over CloudWatch's size limit is cut, not refused with its batch", async () => {
    const logs = shipper();
    logs.push("x".repeat(300_000));
    logs.push("é".repeat(200_000)); // two bytes each in UTF-8
    logs.push("small");
    await logs.stop();
    const [big, wide, small] = stored();
    assert.ok(Buffer.byteLength(big) <= 262_118 && big.endsWith(" [cut]"), `${Buffer.byteLength(big)} bytes`);
    assert.ok(Buffer.byteLength(wide) <= 262_118 && wide.startsWith("éé") && !wide.includes("\uFFFD"));
    assert.equal(small, "small");
  });

  it("a batch CloudWatch refuses for what it is is dropped, counted and said; the next ones go on", async () => {
    const logs = shipper();
    aws.fail("Logs_20140328.PutLogEvents", 1, {
      status: 400,
      code: "InvalidParameterException",
      message: "refused for good",
    });
    logs.push("refused one");
    logs.push("refused two");
    await logs.flush();
    logs.push("next");
    await logs.stop();
    const [notice, next] = stored();
    assert.deepEqual(JSON.parse(notice), {
      ...JSON.parse(notice),
      level: "warn",
      msg: "log lines dropped",
      count: 2,
      reason: "refused: InvalidParameterException: refused for good",
    });
    assert.equal(next, "next");
  });

  it("throttling, missing permissions and a deleted stream are waited out with nothing lost", async () => {
    const logs = shipper();
    aws.fail("Logs_20140328.PutLogEvents", 5, { status: 400, code: "ThrottlingException" });
    logs.push("one");
    await logs.flush();
    aws.fail("Logs_20140328.PutLogEvents", 1, { status: 400, code: "AccessDeniedException" });
    await logs.stop(); // the last throttle, then permissions not there yet
    assert.deepEqual(stored(), []);
    await logs.stop();
    assert.deepEqual(stored(), ["one"]);
    // The stream deleted under it: made again on the next attempt.
    aws.streams.delete(STREAM);
    logs.push("two");
    await logs.stop();
    await logs.stop();
    assert.deepEqual(stored(), ["two"]);
    assert.equal(aws.callsOf("Logs_20140328.CreateLogStream").length, 2);
  });
});
