// The SDK's TypeScript types (src/protocol.d.ts) agree with the protocol's JSON Schema
// (generated from the server's Rust types, checked in under actors/protocol/): the same
// server frame types, each with the same fields, required where the schema requires
// them. Read with the TypeScript compiler API, so a renamed field fails here.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import ts from 'typescript';
import { ROOT, schemaFile } from './support.mjs';

const here = path.dirname(new URL(import.meta.url).pathname);

/** `type` tag -> {fields: Map<name, required>} from the d.ts union `ServerFrame`. */
function tsFrames() {
  const file = path.join(here, '../src/protocol.d.ts');
  const program = ts.createProgram([file], { strict: true, noEmit: true, types: [] });
  const checker = program.getTypeChecker();
  const source = program.getSourceFile(file);
  const alias = source.statements.find((s) => ts.isTypeAliasDeclaration(s) && s.name.text === 'ServerFrame');
  const union = checker.getTypeAtLocation(alias.name);
  const out = new Map();
  for (const member of union.types) {
    const fields = new Map();
    let tag = null;
    for (const prop of checker.getPropertiesOfType(member)) {
      const optional = (prop.flags & ts.SymbolFlags.Optional) !== 0;
      fields.set(prop.name, !optional);
      if (prop.name === 'type') {
        const t = checker.getTypeOfSymbolAtLocation(prop, alias);
        tag = t.value;
      }
    }
    out.set(tag, fields);
  }
  return out;
}

function resolve(schema, node) {
  let n = node;
  while (n && n.$ref) {
    const parts = n.$ref.replace(/^#\//, '').split('/');
    n = parts.reduce((o, k) => o[k], schema);
  }
  return n;
}

/** Merge `allOf` parts, `$ref`s and their siblings into one object schema {properties, required}. */
function flatten(schema, node) {
  const n = node;
  const props = {};
  const required = new Set();
  if (n.$ref) {
    const f = flatten(schema, resolve(schema, { $ref: n.$ref }));
    Object.assign(props, f.properties);
    for (const r of f.required) required.add(r);
  }
  Object.assign(props, n.properties || {});
  for (const r of n.required || []) required.add(r);
  for (const part of n.allOf || []) {
    const f = flatten(schema, part);
    Object.assign(props, f.properties);
    for (const r of f.required) required.add(r);
  }
  return { properties: props, required };
}

/** `type` tag -> {fields: Map<name, required>} from the schema's ServerFrame. */
function schemaFrames() {
  const schema = JSON.parse(readFileSync(schemaFile(), 'utf8'));
  const defs = schema.$defs || schema.definitions || {};
  const root = defs.ServerFrame ? resolve(schema, defs.ServerFrame) : resolve(schema, schema.properties?.server || schema);
  const variants = root.oneOf || root.anyOf;
  assert.ok(Array.isArray(variants), 'the schema lists the server frames under oneOf/anyOf');
  const out = new Map();
  for (const v of variants) {
    const f = flatten(schema, v);
    const typeProp = resolve(schema, f.properties.type || {});
    const tag = typeProp.const ?? typeProp.enum?.[0];
    assert.ok(tag, `a server frame variant without a type tag: ${JSON.stringify(v).slice(0, 200)}`);
    out.set(tag, new Map(Object.keys(f.properties).map((k) => [k, f.required.has(k)])));
  }
  return out;
}

test('the SDK types and the JSON Schema list the same server frames with the same fields', () => {
  const mine = tsFrames();
  const theirs = schemaFrames();
  assert.deepEqual([...mine.keys()].sort(), [...theirs.keys()].sort(), 'frame types');
  const problems = [];
  for (const [tag, fields] of theirs) {
    const have = mine.get(tag);
    for (const [name, required] of fields) {
      if (!have.has(name)) problems.push(`${tag}.${name} is missing from the SDK types`);
      else if (have.get(name) !== required) problems.push(`${tag}.${name}: required ${required} in the schema, ${have.get(name)} in the SDK`);
    }
    for (const name of have.keys()) if (!fields.has(name)) problems.push(`${tag}.${name} is in the SDK types but not in the schema`);
  }
  assert.deepEqual(problems, []);
  assert.ok(ROOT);
});
