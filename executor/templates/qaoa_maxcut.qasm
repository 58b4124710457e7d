// QAOA for MaxCut, one layer, on the 5-vertex ring with the chord 0-2: parameters gamma, beta.
OPENQASM 3.0;
include "stdgates.inc";
// ZZ interaction exp(-i t/2 Z⊗Z), as Qiskit's RZZGate.
gate rzz(t) a, b { cx a, b; rz(t) b; cx a, b; }
input float gamma;
input float beta;
qubit[5] q;
bit[5] c;
h q[0];
h q[1];
h q[2];
h q[3];
h q[4];
rzz(2 * gamma) q[0], q[1];
rzz(2 * gamma) q[1], q[2];
rzz(2 * gamma) q[2], q[3];
rzz(2 * gamma) q[3], q[4];
rzz(2 * gamma) q[4], q[0];
rzz(2 * gamma) q[0], q[2];
rx(2 * beta) q[0];
rx(2 * beta) q[1];
rx(2 * beta) q[2];
rx(2 * beta) q[3];
rx(2 * beta) q[4];
c = measure q;
