/** Copies of the default package to break on purpose. */
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MODEL_DIR } from './app.js';

export interface PackageCopy {
  dir: string;
  manifest: any;
  writeManifest(manifest: unknown): void;
  remove(): void;
}

export function copyPackage(): PackageCopy {
  const root = mkdtempSync(join(tmpdir(), 'chameleon-pkg-'));
  const dir = join(root, 'package');
  cpSync(MODEL_DIR, dir, { recursive: true });
  const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
  return {
    dir,
    manifest,
    writeManifest: (m) => writeFileSync(join(dir, 'manifest.json'), JSON.stringify(m)),
    remove: () => rmSync(root, { recursive: true, force: true }),
  };
}
