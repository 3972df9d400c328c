// Builds dist/chat-widget.js (one minified, dependency-free IIFE) and fails
// when it is over the size budget, gzipped. Usage: node build.mjs [--check]
// (--check: type-check with tsc first).
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

const BUDGET = 12 * 1024; // bytes, gzipped
const out = "dist/chat-widget.js";
const here = new URL(".", import.meta.url).pathname;
process.chdir(here);

if (process.argv.includes("--check")) {
  execFileSync(process.execPath, ["node_modules/typescript/bin/tsc", "--noEmit", "-p", "."], { stdio: "inherit" });
}

await build({
  absWorkingDir: here,
  entryPoints: ["src/index.ts"],
  outfile: out,
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2020", "chrome90", "firefox90", "safari15"],
  legalComments: "none",
  banner: { js: "/* support-chat widget, see widget/README.md */" },
  logLevel: "warning",
});

const code = readFileSync(out);
const gz = gzipSync(code).length;
const line = `chat-widget.js: ${code.length} bytes, ${gz} bytes gzipped (${(gz / 1024).toFixed(1)} KB; budget ${BUDGET / 1024} KB)`;
writeFileSync("dist/size.txt", line + "\n");
console.log(line);
if (gz > BUDGET) {
  console.error(`chat-widget.js is over its size budget: ${gz} > ${BUDGET} bytes gzipped`);
  process.exit(1);
}
