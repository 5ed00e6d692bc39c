/**
 * Test prompts. The two "domains" are a licence clause and a whaling scene, each varied by one word: clearly
 * different domains whose members share their vocabulary, so that the features separate them for any trained
 * embedding table (and the prompts stay short enough for a small package's context).
 */
export const LICENSE = ['software', 'program', 'library', 'code', 'work', 'files', 'package', 'documentation'].map(
  (w) => `Permission is hereby granted, free of charge, to any person obtaining a copy of this ${w}`,
);

export const SEA = ['crew', 'men', 'sailors', 'mates', 'boys', 'harpooneers', 'oarsmen', 'seamen'].map(
  (w) => `The whale rose from the sea, and the ${w} pulled hard at the oars`,
);

/** Distinct short prompts. */
export function distinctPrompts(n: number): string[] {
  const subjects = ['The ship', 'A letter', 'The license', 'Our nation', 'The whale', 'My friend', 'The court', 'This email'];
  const verbs = ['sailed', 'arrived', 'grants', 'remembers', 'rose', 'wrote', 'decided', 'asks'];
  return Array.from({ length: n }, (_, i) => `${subjects[i % subjects.length]} ${verbs[(i * 3) % verbs.length]} on day ${i}.`);
}
