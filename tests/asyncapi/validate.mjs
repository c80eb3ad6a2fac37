// Validates an AsyncAPI document with the AsyncAPI parser (resolving its $refs to files);
// prints the diagnostics and exits 1 on any error. Usage: node validate.mjs FILE
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { Parser, fromFile } from "@asyncapi/parser";

const file = resolve(process.argv[2]);
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, file).parse();
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics) {
  console.log(`${["error", "warning", "info", "hint"][d.severity]} ${d.code} ${d.path.join(".")}: ${d.message}`);
}
if (!document || errors.length) process.exit(1);
console.log(`valid: ${document.channels().length} channels, ${document.messages().length} messages`);
