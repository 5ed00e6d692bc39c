/**
 * What the benchmarks' client side shares: a cheap streamed completion client, percentiles, and a server started as
 * its own process (`node dist/server.js`, what `npm start` runs) on a free port.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { Agent, request as httpRequest } from 'node:http';
import { createServer } from 'node:net';

/** The words the benchmarks' prompts are made of. */
export const WORDS = 'ship sea whale captain nation congress people letter server license software union war peace money law court river'.split(' ');

export interface Sample { ttft: number; gaps: number[]; e2e: number; tokens: number; promptTokens: number; window: number; cluster: number }

export const quantile = (xs: number[], q: number) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};
export const mean = (xs: number[]) => (xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length);

/**
 * The benchmark's clients share the machine with the server, so they are kept cheap: node:http on a keep-alive
 * agent and a hand-rolled SSE split (fetch's web streams cost the clients about twice the CPU at 32 streams).
 */
export const clientAgent = new Agent({ keepAlive: true, maxSockets: 256 });

/** One streamed request: time to the first token, the gaps between tokens, the whole request. */
export function streamed(base: string, body: Record<string, unknown>): Promise<Sample> {
  const started = performance.now();
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const request = httpRequest(`${base}/v1/completions`, { method: 'POST', agent: clientAgent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } }, (res) => {
      res.setEncoding('utf8');
      if (res.statusCode !== 200) {
        let text = '';
        res.on('data', (chunk: string) => { text += chunk; });
        res.on('end', () => reject(new Error(`HTTP ${res.statusCode}: ${text}`)));
        return;
      }
      const sample: Sample = { ttft: NaN, gaps: [], e2e: 0, tokens: 0, promptTokens: 0, window: NaN, cluster: NaN };
      let last = NaN;
      let buffered = '';
      res.on('data', (text: string) => {
        buffered += text;
        let end: number;
        while ((end = buffered.indexOf('\n\n')) >= 0) {
          const event = buffered.slice(0, end);
          buffered = buffered.slice(end + 2);
          if (!event.startsWith('data: ') || event === 'data: [DONE]') continue;
          const chunk = JSON.parse(event.slice(6));
          if (chunk.error) {
            res.destroy();
            reject(new Error(chunk.error.message));
            return;
          }
          if (chunk.usage) {
            sample.tokens = chunk.usage.completion_tokens;
            sample.promptTokens = chunk.usage.prompt_tokens;
          }
          if (chunk.chameleon && Number.isNaN(sample.window)) {
            sample.window = chunk.chameleon.batch_size;
            sample.cluster = chunk.chameleon.cluster_size;
          }
          if (chunk.choices?.[0]?.text) {
            const now = performance.now();
            if (Number.isNaN(sample.ttft)) sample.ttft = now - started;
            else sample.gaps.push(now - last);
            last = now;
          }
        }
      });
      res.on('end', () => {
        sample.e2e = performance.now() - started;
        resolve(sample);
      });
      res.on('error', reject);
    });
    request.on('error', reject);
    request.end(payload);
  });
}

/** A non-streamed completion request: the parsed answer (an HTTP status other than 200 rejects with the body). */
export function postCompletion(base: string, body: unknown): Promise<any> {
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const request = httpRequest(`${base}/v1/completions`, { method: 'POST', agent: clientAgent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } }, (res) => {
      res.setEncoding('utf8');
      let text = '';
      res.on('data', (chunk: string) => { text += chunk; });
      res.on('end', () => {
        if (res.statusCode !== 200) reject(new Error(`HTTP ${res.statusCode}: ${text.slice(0, 400)}`));
        else resolve(JSON.parse(text));
      });
      res.on('error', reject);
    });
    request.on('error', reject);
    request.end(payload);
  });
}

/** One non-streamed request: the whole request's time and its usage (a Sample without first-token or gap times). */
export async function completed(base: string, body: Record<string, unknown>): Promise<Sample> {
  const started = performance.now();
  const answer = await postCompletion(base, { ...body, stream: false, stream_options: undefined });
  return {
    ttft: NaN, gaps: [], e2e: performance.now() - started, tokens: answer.usage.completion_tokens, promptTokens: answer.usage.prompt_tokens,
    window: answer.chameleon?.batch_size ?? NaN, cluster: answer.chameleon?.cluster_size ?? NaN,
  };
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}

export async function startServer(modelDir: string, env: Record<string, string>): Promise<{ base: string; child: ChildProcess }> {
  const port = await freePort();
  const child = spawn(process.execPath, ['dist/server.js'], {
    env: { ...process.env, HOST: '127.0.0.1', PORT: String(port), LOG_LEVEL: 'warn', MODEL_DIR: modelDir, ...env },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 120; i++) {
    if (child.exitCode !== null) throw new Error(`the server exited with code ${child.exitCode}`);
    const ready = await fetch(`${base}/health/ready`).then((r) => r.ok, () => false);
    if (ready) return { base, child };
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  await stopServer(child);
  throw new Error('the server did not become ready within 60 s');
}

/** Stops the server (a server that has exited already is left as it is: its exit event has passed). */
export async function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await exited;
}
