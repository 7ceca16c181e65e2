// Builds the component: `node build.mjs <entry.js> <wit dir> <out.wasm>`
// (run by meterd-plugin-build). componentize-js's API, not jco's
// `componentize` CLI, which failed on this machine kind. Every WASI feature
// the plugin does not need is left out: only stdio (console.* → the
// gateway's log) stays.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';

const [sourcePath, witPath, out] = process.argv.slice(2);
if (!out) {
  console.error('usage: node build.mjs <entry.js> <wit dir> <out.wasm>');
  process.exit(2);
}
const { component } = await componentize({
  sourcePath,
  witPath,
  worldName: 'provider',
  disableFeatures: ['random', 'clocks', 'http', 'fetch-event'],
});
await writeFile(out, component);
