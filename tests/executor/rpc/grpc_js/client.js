// qledger's gRPC services called by another implementation of gRPC: grpc-js, with the service
// definitions read from protos/ at run time by proto-loader (no generated code).  Prints one
// JSON object of what it saw; the Python test judges it.
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const [address, runId, protoPath] = process.argv.slice(2);
const definition = protoLoader.loadSync(protoPath, { keepCase: true, longs: Number, defaults: true });
const v1 = grpc.loadPackageDefinition(definition).qledger.v1;
const credentials = grpc.credentials.createInsecure();  // loopback only
const executor = new v1.Executor(address, credentials);
const ledger = new v1.Ledger(address, credentials);

// The rich error model (google.rpc.Status with a BadRequest detail), as its own definitions.
const rpc = protobuf.parse(`
  syntax = "proto3";
  package google.rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message BadRequest {
    message FieldViolation { string field = 1; string description = 2; }
    repeated FieldViolation field_violations = 1;
  }`, { keepCase: true }).root;

const unary = (client, method, request) => new Promise((resolve) => {
  client[method](request, { deadline: Date.now() + 10000 }, (error, reply) => resolve({ error, reply }));
});

function violations(error) {
  const raw = error.metadata.get("grpc-status-details-bin")[0];
  if (!raw) return [];
  const status = rpc.lookupType("google.rpc.Status").decode(raw);
  return status.details
    .filter((d) => d.type_url.endsWith("/google.rpc.BadRequest"))
    .flatMap((d) => rpc.lookupType("google.rpc.BadRequest").decode(d.value).field_violations.map((v) => v.field));
}

async function main() {
  const seen = {};
  const checkpoint = await unary(ledger, "GetCheckpoint", {});
  seen.checkpoint = { tree_size: checkpoint.reply.tree_size, note: checkpoint.reply.note };
  const size = checkpoint.reply.tree_size;
  const positions = Array.from({ length: size }, (_, i) => i + 1);
  const proofs = await unary(ledger, "GetInclusionProofs", { positions, tree_size: size });
  seen.proofs = proofs.reply.proofs.map((p) => ({
    leaf_index: p.leaf_index, tree_size: p.tree_size,
    leaf_hash: Buffer.from(p.leaf_hash).toString("hex"), path: p.path.map((h) => Buffer.from(h).toString("hex")),
    root_hash: Buffer.from(p.root_hash).toString("hex"),
  }));
  const run = await unary(executor, "GetRun", { run_id: runId });
  seen.run = { status: run.reply.status, steps: run.reply.steps };
  seen.watched = await new Promise((resolve, reject) => {
    const entries = [];
    const call = executor.WatchRun({ run_id: runId }, { deadline: Date.now() + 30000 });
    call.on("data", (e) => entries.push({ position: e.position, event_type: e.event_type,
                                          envelope: Buffer.from(e.envelope).toString("base64") }));
    call.on("end", () => resolve(entries));
    call.on("error", reject);
  });
  const refused = await unary(executor, "GetRun", { run_id: "nope" });
  seen.refused = { code: refused.error.code, fields: violations(refused.error) };
  const missing = await unary(ledger, "GetInclusionProofs", { positions: [size + 1] });
  seen.out_of_range = { code: missing.error.code, fields: violations(missing.error) };
  process.stdout.write(JSON.stringify(seen));
  executor.close();
  ledger.close();
}

main().catch((error) => { process.stderr.write(String(error.stack || error)); process.exit(1); });
