#!/usr/bin/env node
// Takes Claude Code's credential locks the way Claude Code does, with the real
// proper-lockfile, for tests/integration/test_lock_interop.py.
//
//   node lockhelper.js hold  <oauth|legacy|both> <configDir> [--stale MS] [--update MS]
//       lock, print {"event":"locked",...}, wait for a "release" line (or EOF)
//       on stdin, unlock, print {"event":"released"}; exit 3 if compromised.
//   node lockhelper.js try   <oauth|legacy|both> <configDir> [--stale MS]
//       one attempt, no retries: exit 0 (locked, then unlocked) or
//       2 with {"event":"busy","code":"ELOCKED"}; 1 on any other error.
//   node lockhelper.js count <oauth|legacy|both> <configDir> --n N --counter FILE
//       N times: lock (retrying), read FILE, +1, write tmp + rename, unlock.
//
// Claude Code's calls, as read from the 2.1.332 bundle (stale 60000, update 5000):
//   oauth : lock(configDir, {lockfilePath: join(configDir, '.oauth_refresh.lock'), realpath: false})
//   legacy: k = (realpath(configDir) or configDir) + '.lock'; lock(k, {lockfilePath: k, realpath: false})
// taken in that order; an ELOCKED on the legacy lock releases the first one.
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const lockfile = require('proper-lockfile');

function parse(argv) {
  const [cmd, which, configDir, ...rest] = argv;
  const opts = { stale: 60000, update: 5000, n: 1, counter: null };
  for (let i = 0; i < rest.length; i += 2) {
    const key = rest[i].replace(/^--/, '');
    opts[key] = key === 'counter' ? rest[i + 1] : Number(rest[i + 1]);
  }
  if (!['hold', 'try', 'count'].includes(cmd) || !['oauth', 'legacy', 'both'].includes(which) || !configDir) {
    console.error('usage: lockhelper.js <hold|try|count> <oauth|legacy|both> <configDir> [--stale MS] [--update MS]');
    process.exit(64);
  }
  return { cmd, which, configDir, opts };
}

function specs(which, configDir) {
  const oauthPath = path.join(configDir, '.oauth_refresh.lock');
  let real = configDir;
  try { real = fs.realpathSync(configDir); } catch (e) { /* Claude Code falls back to the path */ }
  const legacyPath = `${real}.lock`;
  const oauth = { file: configDir, lockfile: path.resolve(oauthPath), options: { lockfilePath: oauthPath, realpath: false } };
  const legacy = { file: legacyPath, lockfile: legacyPath, options: { lockfilePath: legacyPath, realpath: false } };
  return which === 'oauth' ? [oauth] : which === 'legacy' ? [legacy] : [oauth, legacy];
}

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

async function lockAll(list, base) {
  const releases = [];
  try {
    for (const s of list) {
      releases.push(await lockfile.lock(s.file, { ...base, ...s.options }));
    }
  } catch (err) {
    for (const release of releases.reverse()) await release();
    throw err;
  }
  return async () => { for (const release of releases.reverse()) await release(); };
}

async function main() {
  const { cmd, which, configDir, opts } = parse(process.argv.slice(2));
  const list = specs(which, configDir);
  const base = {
    stale: opts.stale,
    update: opts.update,
    onCompromised: (err) => { emit({ event: 'compromised', code: err.code, message: err.message }); process.exit(3); },
  };

  if (cmd === 'try') {
    let release;
    try {
      release = await lockAll(list, base);
    } catch (err) {
      emit({ event: err.code === 'ELOCKED' ? 'busy' : 'error', code: err.code, file: err.file });
      process.exit(err.code === 'ELOCKED' ? 2 : 1);
    }
    emit({ event: 'locked' });
    await release();
    return;
  }

  if (cmd === 'count') {
    const retries = { retries: 5000, factor: 1, minTimeout: 2, maxTimeout: 10, randomize: true };
    for (let i = 0; i < opts.n; i++) {
      const release = await lockAll(list, { ...base, retries });
      const value = JSON.parse(fs.readFileSync(opts.counter, 'utf8')).value;
      await new Promise((r) => setTimeout(r, 3)); // widen the race window
      fs.writeFileSync(opts.counter + '.node.tmp', JSON.stringify({ value: value + 1 }));
      fs.renameSync(opts.counter + '.node.tmp', opts.counter);
      await release();
    }
    emit({ event: 'done', n: opts.n });
    return;
  }

  // hold
  const release = await lockAll(list, base);
  emit({ event: 'locked', lockfiles: list.map((s) => s.lockfile) });
  const rl = readline.createInterface({ input: process.stdin });
  await new Promise((resolve) => {
    rl.on('line', (line) => { if (line.trim() === 'release') resolve(); });
    rl.on('close', resolve);
  });
  rl.close();
  await release();
  emit({ event: 'released' });
}

main().catch((err) => { emit({ event: 'error', code: err.code, message: err.message }); process.exit(1); });
