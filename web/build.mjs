// Builds the chat page into src/studiolo/api/page/static/ (or the folder given as the first
// argument): page.js (the sources bundled and minified, licences kept at its end), page.css (the
// page's styles and highlight.js's light and dark themes), index.html and icon.svg, and
// SOURCES.sha256, the hash of the sources they were built from (tests/test_page_bundle.py
// checks that the committed files are up to date with the sources).

import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const web = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] || join(web, "..", "src", "studiolo", "api", "page", "static");
const theme = (name) => readFileSync(join(web, "node_modules", "highlight.js", "styles", name), "utf8");

// what the build reads: the hash covers each file's path (from web/) and bytes, in path order
export function sourcesHash() {
  const files = ["build.mjs", "package.json", "package-lock.json", ...readdirSync(join(web, "src")).map((f) => `src/${f}`)];
  const hash = createHash("sha256");
  for (const file of files.sort()) {
    const bytes = readFileSync(join(web, file));
    hash.update(`${file}\n${bytes.length}\n`);
    hash.update(bytes);
  }
  return hash.digest("hex");
}

mkdirSync(out, { recursive: true });
await esbuild.build({
  entryPoints: [join(web, "src", "main.js")],
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2020",
  legalComments: "eof",
  outfile: join(out, "page.js"),
  logLevel: "warning",
});
const css = [
  readFileSync(join(web, "src", "page.css"), "utf8"),
  theme("github.css"),
  `@media (prefers-color-scheme: dark) {\n${theme("github-dark.css")}\n}`,
].join("\n");
const minified = await esbuild.transform(css, { loader: "css", minify: true, legalComments: "eof" });
writeFileSync(join(out, "page.css"), minified.code);
for (const file of ["index.html", "icon.svg"]) copyFileSync(join(web, "src", file), join(out, file));
writeFileSync(join(out, "SOURCES.sha256"), `${sourcesHash()}\n`);
console.log(`built the page into ${relative(process.cwd(), out) || "."}`);
