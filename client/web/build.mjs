// Bundles the console into OUT (default ./dist): app.js, app.css, index.html.
// No source maps or third-party files are committed; everything comes from
// node_modules at build time.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

const out = process.env.AIRLOCK_CONSOLE_OUT || 'dist';
mkdirSync(out, { recursive: true });
await build({
  entryPoints: { app: 'src/main.js' },
  bundle: true,
  format: 'esm',
  target: ['chrome110', 'firefox110', 'safari16'],
  minify: true,
  legalComments: 'linked',
  outdir: out,
  logLevel: 'warning',
});
copyFileSync('src/index.html', join(out, 'index.html'));
