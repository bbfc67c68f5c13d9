export * from "./fields";
export * from "./env";
export * from "./validate";
export * from "./roles";
export * from "./launcher";
export * from "./vcs-agent";
export * from "./flows-agent";
export { settingsJsonSchema } from "./settings-schema";
