/**
 * Compares the decoder graphs of model packages on this machine: raw ONNX Runtime decode steps (the service's session
 * settings, threads asleep while idle) at batch 1 and 32, in rounds that alternate between the packages, so that the
 * machine's drift over minutes hits each alike. Also the process CPU time per step (the cost when the cores are
 * saturated, as under load).
 *
 *   npx tsx bench/decoder-ab.ts DIR_A DIR_B [...]      (BENCH_ROUNDS=4, BENCH_PAST=24)
 */
import { RawLoop } from './raw-loop.js';

const dirs = process.argv.slice(2);
if (dirs.length < 2) {
  console.error('usage: npx tsx bench/decoder-ab.ts DIR_A DIR_B [...]');
  process.exit(2);
}
const rounds = Number(process.env.BENCH_ROUNDS ?? 4);
const past = Number(process.env.BENCH_PAST ?? 24);
const loops = await Promise.all(dirs.map((dir) => RawLoop.open(dir, { threads: 0, spinning: false }, 32)));

const sums = dirs.map(() => ({ b1: 0, b32: 0, cpu32: 0 }));
for (let round = 1; round <= rounds; round++) {
  const cells: string[] = [];
  for (const [i, loop] of loops.entries()) {
    const one = await loop.decodeStep(1, past);
    const full = await loop.decodeStep(32, past);
    sums[i].b1 += one.ms;
    sums[i].b32 += full.ms;
    sums[i].cpu32 += full.cpuMs;
    cells.push(`${dirs[i]}: batch 1 ${one.ms.toFixed(2)} ms, batch 32 ${full.ms.toFixed(2)} ms (CPU ${full.cpuMs.toFixed(1)} ms)`);
  }
  console.log(`round ${round}: ${cells.join(' | ')}`);
}
console.log(`mean of ${rounds} rounds, past ${past} positions:`);
for (const [i, dir] of dirs.entries()) {
  const { b1, b32, cpu32 } = sums[i];
  const base = sums[0];
  console.log(`  ${dir}: batch 1 ${(b1 / rounds).toFixed(2)} ms, batch 32 ${(b32 / rounds).toFixed(2)} ms, CPU per batch-32 step ${(cpu32 / rounds).toFixed(1)} ms` +
    (i === 0 ? '' : ` (batch 32: ${(b32 / base.b32).toFixed(2)}x ${dirs[0]}, CPU ${(cpu32 / base.cpu32).toFixed(2)}x)`));
}
await Promise.all(loops.map((loop) => loop.close()));
