import assert from "node:assert/strict";
import { FLOWS_MAX_VALUE_KEYS } from "../../protocol/flows";
import { resultMessage } from "./agent";
import { checkAnswer } from "./channel";

/** What the gateway reads of a result message. */
const read = (message: string) => JSON.parse(message) as Record<string, unknown>;

describe("the Flows agent's result message", () => {
  it("carries a checked answer as the text it came in, after the agent's own type, id and duration", () => {
    const text = '{"ok":true,"value":{"n":1e400,"s":"\\ud800"},"console":["a"]}';
    const message = resultMessage("run-1", { ...checkAnswer(text), durationMs: 1.5 });
    assert.equal(message, `{"type":"result","id":"run-1","durationMs":1.5,${text.slice(1)}`);
    // What the gateway answers its client (it encodes what it read) is the same as from the answer encoded field by field.
    const { text: _, ...fields } = checkAnswer(text);
    const answered = (m: string) => {
      const { type, id, ok, value, error, console, durationMs } = read(m);
      return JSON.stringify({ type, id, ok, value, error, console, durationMs });
    };
    assert.equal(answered(message), answered(resultMessage("run-1", { ...fields, durationMs: 1.5 })));
  });

  it("an answer with repeated fields reads on the gateway as the agent checked it (the last of each)", () => {
    const text = '{"ok":false,"error":{"name":"E","message":"m"},"console":[],"ok":true,"error":null,"value":2}';
    assert.throws(() => checkAnswer(text), /wrong types/, "error: null with ok");
    const repeated = '{"ok":false,"value":1,"console":["x"],"ok":true,"console":[]}';
    const checked = checkAnswer(repeated);
    const read_ = read(resultMessage("run-2", { ...checked, durationMs: 1 }));
    assert.deepEqual([read_.type, read_.id, read_.ok, read_.value, read_.console], ["result", "run-2", true, 1, []]);
    assert.deepEqual([checked.ok, checked.value, checked.console], [true, 1, []]);
  });

  it("an answer within the runtime's caps whose message is not becomes an error naming the cap, with the agent's id", () => {
    // At the key cap as an answer; the message adds three keys of the agent's.
    const keys = FLOWS_MAX_VALUE_KEYS - 3;
    const text = `{"ok":true,"value":{${Array.from({ length: keys }, (_, i) => `"k${i}":0`).join(",")}},"console":[]}`;
    const message = read(resultMessage("run-3", { ...checkAnswer(text), durationMs: 1 }));
    assert.deepEqual([message.type, message.id, message.ok], ["result", "run-3", false]);
    assert.match((message.error as { message: string }).message, /more than the cap of 250000 object keys/);
  });
});
