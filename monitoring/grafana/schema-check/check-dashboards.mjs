// Type-checks dashboard JSON files against Grafana's classic dashboard model from @grafana/schema.
// Usage: node check-dashboards.mjs dashboard.json...   (exit status 1 on any type error)
//
// Each dashboard becomes an object literal typed as `Dashboard`, so tsc applies excess-property checks
// (a misspelt key fails) and literal-union checks (e.g. graphTooltip must be 0, 1 or 2). The schema types a
// few fields as TypeScript string enums, which no string literal satisfies: those values are written as the
// enum member with that value, and a value that is no member stays a string, which tsc then rejects.
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const MODULE = '@grafana/schema/dist/esm/raw/dashboard/x/Dashboard_types.gen';
const here = path.dirname(fileURLToPath(import.meta.url));
const gen = path.join(here, 'gen');
const files = process.argv.slice(2);
if (files.length === 0) {
  console.error('usage: node check-dashboards.mjs dashboard.json...');
  process.exit(2);
}
const schema = await import(MODULE);
// [enum name, predicate on (parent key, key)] for the enum-typed fields dashboards use.
const ENUM_FIELDS = [
  ['ThresholdsMode', (parent, key) => parent === 'thresholds' && key === 'mode'],
  ['FieldColorModeId', (parent, key) => parent === 'color' && key === 'mode'],
  ['MappingType', (parent, key) => parent === 'mappings' && key === 'type'],
];
const used = new Set();

function memberOf(enumName, value) {
  const members = schema[enumName];
  const member = Object.keys(members).find((name) => members[name] === value);
  return member === undefined ? undefined : `${enumName}.${member}`;
}

function encode(node, parentKey) {
  if (Array.isArray(node)) return node.map((item) => encode(item, parentKey));
  if (node === null || typeof node !== 'object') return node;
  const out = {};
  for (const [key, value] of Object.entries(node)) {
    const field = ENUM_FIELDS.find(([, matches]) => matches(parentKey, key));
    const member = field && typeof value === 'string' ? memberOf(field[0], value) : undefined;
    if (member) {
      used.add(field[0]);
      out[key] = `@@${member}@@`;
    } else {
      out[key] = encode(value, key);
    }
  }
  return out;
}

fs.rmSync(gen, { recursive: true, force: true });
fs.mkdirSync(gen);
for (const file of files) {
  used.clear();
  const body = JSON.stringify(encode(JSON.parse(fs.readFileSync(file, 'utf8')), ''), null, 1).replace(
    /"@@([\w.]+)@@"/g,
    '$1',
  );
  const imports = ['type Dashboard', ...used].join(', ');
  const name = path.basename(file).replace(/\W/g, '_') + '.ts';
  fs.writeFileSync(
    path.join(gen, name),
    `import { ${imports} } from '${MODULE}';\n` +
      `export const dashboard: Dashboard = ${body};\n`,
  );
}
try {
  execFileSync(path.join(here, 'node_modules', '.bin', 'tsc'), ['-p', here], { stdio: 'inherit' });
  console.log(`OK: ${files.length} dashboards type-check against @grafana/schema`);
} catch {
  process.exit(1);
}
