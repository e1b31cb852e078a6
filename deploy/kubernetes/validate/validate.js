// Loads every YAML document under a directory and validates it with the kubernetes-models class
// for its apiVersion/kind (the Kubernetes OpenAPI schema). Also checks that the meshlane.conf in
// ConfigMaps only uses keys documented in deploy/meshlane.conf.
// Usage: node validate.js DIR | node validate.js --self-test
"use strict";
const fs = require("fs");
const path = require("path");
const yaml = require("js-yaml");

function modelFor(apiVersion, kind) {
  if (typeof apiVersion !== "string" || typeof kind !== "string")
    throw new Error("apiVersion and kind are required");
  // The Prometheus Operator's CRDs (podmonitor.yaml) have their own package.
  const base = apiVersion.startsWith("monitoring.coreos.com/")
    ? "@kubernetes-models/prometheus-operator"
    : "kubernetes-models";
  const module = `${base}/${apiVersion}/${kind}`;
  let exported;
  try {
    exported = require(module);
  } catch (e) {
    throw new Error(`no Kubernetes model for ${apiVersion} ${kind} (${module})`);
  }
  if (!exported[kind]) throw new Error(`${module} exports no ${kind}`);
  return exported[kind];
}

// kustomization.yaml has no Kubernetes schema: check what kustomize would trip over, i.e. the
// resources exist and every `images` entry names an image the resources use.
function validateKustomization(doc, file) {
  const dir = path.dirname(file);
  const used = new Set();
  for (const resource of doc.resources || []) {
    const full = path.join(dir, resource);
    if (!fs.existsSync(full)) throw new Error(`resource ${resource} does not exist`);
    for (const m of fs.readFileSync(full, "utf8").matchAll(/^\s*image:\s*(\S+)/gm))
      used.add(m[1].replace(/[:@].*$/, ""));
  }
  for (const image of doc.images || []) {
    if (!used.has(image.name)) throw new Error(`images: ${image.name} is used by no resource`);
  }
}

function validateDocument(doc, file) {
  if (doc.apiVersion === "kustomize.config.k8s.io/v1beta1" && doc.kind === "Kustomization")
    return validateKustomization(doc, file);
  const Model = modelFor(doc.apiVersion, doc.kind);
  new Model(doc).validate(); // throws with every schema violation
}

function documentedConfigKeys() {
  const conf = fs.readFileSync(path.join(__dirname, "..", "..", "meshlane.conf"), "utf8");
  const keys = new Set();
  for (const line of conf.split("\n")) {
    const m = line.match(/^#?\s*([a-z_]+)\s*=/);
    if (m) keys.add(m[1]);
  }
  return keys;
}

function checkMeshlaneConf(doc, where) {
  if (doc.kind !== "ConfigMap" || !doc.data || !doc.data["meshlane.conf"]) return;
  const known = documentedConfigKeys();
  for (const line of doc.data["meshlane.conf"].split("\n")) {
    const text = line.replace(/#.*/, "").trim();
    if (!text) continue;
    const m = text.match(/^([a-z_]+)\s*=/);
    if (!m) throw new Error(`${where}: meshlane.conf: not "key = value": ${line}`);
    if (!known.has(m[1])) throw new Error(`${where}: meshlane.conf: unknown key ${m[1]}`);
  }
}

function yamlFiles(dir) {
  const out = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...yamlFiles(full));
    else if (/\.ya?ml$/.test(entry.name)) out.push(full);
  }
  return out.sort();
}

function selfTest() {
  const broken = {
    apiVersion: "apps/v1", kind: "DaemonSet", metadata: { name: "x" },
    spec: { selector: { matchLabels: { a: "b" } },
            template: { spec: { hostPID: "yes", containers: [{ image: "i" }] } } },
  };
  try {
    validateDocument(broken);
  } catch (e) {
    console.log(`self-test: a broken DaemonSet is rejected (${e.message})`);
    return 0;
  }
  console.error("self-test: a broken DaemonSet was accepted: the validator validates nothing");
  return 1;
}

function main(argv) {
  if (argv[0] === "--self-test") return selfTest();
  const dir = argv[0];
  const files = yamlFiles(dir);
  if (files.length === 0) {
    console.error(`no YAML files under ${dir}`);
    return 1;
  }
  let failures = 0, count = 0;
  for (const file of files) {
    const docs = yaml.loadAll(fs.readFileSync(file, "utf8")).filter((d) => d != null);
    docs.forEach((doc, i) => {
      const where = `${path.relative(dir, file)}[${i}] ${doc.kind}/${doc.metadata && doc.metadata.name}`;
      try {
        validateDocument(doc, file);
        checkMeshlaneConf(doc, where);
        count++;
        console.log(`ok   ${where}`);
      } catch (e) {
        failures++;
        console.error(`FAIL ${where}: ${e.message}`);
      }
    });
  }
  console.log(`${count} documents valid, ${failures} invalid`);
  return failures === 0 ? 0 : 1;
}

process.exit(main(process.argv.slice(2)));
