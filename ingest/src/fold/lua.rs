//! The fold scripts' Lua: what a refused batch leaves behind
//! ([`REPLACE_REFUSED`], [`MERGE_REFUSED`]), the guards and helpers both
//! scripts share ([`PRELUDE`]), one body per kind of batch ([`REPLACE`],
//! [`MERGE`]), and retention plus the offset ([`EPILOGUE`]).
//!
//! Common arguments:
//! KEYS[1] state hash, KEYS[2] offsets hash, KEYS[3] the entity type's ids
//! (sorted set), KEYS[4] its change log (stream);
//! ARGV[1] epoch, ARGV[2] partition field, ARGV[3] next offset after the
//! batch, ARGV[4] 'epoch', ARGV[5] generation, ARGV[6] the offset the
//! caller knows is stored (its position), ARGV[7] index key prefix
//! (`…:_ix:`; a unique index's hash is named after it, `…:_uix:{index}`), ARGV[8]
//! change log length bound (0: none), ARGV[9] change log max age in ms (0:
//! none), ARGV[10] the entity's index names, space-separated, a unique
//! one followed by `!`.
//! Every script returns `{upserted, deleted, skipped, unique conflicts,
//! ids whose served state changed (merge only)}`; a negative first number
//! is a guard that refused the batch (nothing written).

/// A refused whole-state batch drops its staging hashes (KEYS[6], KEYS[8],
/// ...; see [`REPLACE`]) rather than leave them to their expiry.
pub const REPLACE_REFUSED: &str = r"
local function refused(r)
  for i = 6, #KEYS, 1000 do
    local keys = {}
    for k = i, math.min(i + 999, #KEYS), 2 do keys[#keys + 1] = KEYS[k] end
    redis.call('DEL', unpack(keys))
  end
  return r
end
";

/// A refused merge batch has nothing to drop.
pub const MERGE_REFUSED: &str = r"
local function refused(r) return r end
";

/// Guards (epoch, generation, Redis going back) and the helpers both
/// bodies use: stored index entries, unique indexes, the change log and its
/// trimming. Follows [`LUA_BYTES_LT`](foldcache_common::index::LUA_BYTES_LT).
pub const PRELUDE: &str = r"
if redis.call('HGET', KEYS[1], ARGV[4]) ~= ARGV[1] then
  return refused({-1, 0, 0, 0, {}})
end
-- A generation replaced by a rebuild is frozen at the swap: readers that
-- have not switched yet never see it move ahead of the new one.
local live = redis.call('HGET', KEYS[1], 'live_gen') == ARGV[5]
if not live and redis.call('HGET', KEYS[1], 'build_gen') ~= ARGV[5] then
  return refused({-2, 0, 0, 0, {}})
end
-- No reader can hold a cursor into a generation being built, nor into the
-- live one before its epoch is first ready (query-api serves neither, and a
-- cursor names its epoch and generation): their changes are in the data,
-- and their log starts when they are served.
local logging = live and redis.call('HGET', KEYS[1], 'ready') == '1'
local stored = redis.call('HGET', KEYS[2], ARGV[2])
local fence = 0
if stored then fence = tonumber(stored) end
-- Redis acknowledged offsets up to ARGV[6] and now holds less: it went
-- back in time (restored snapshot, failed over to a lagging replica).
if tonumber(ARGV[6]) > fence then
  return refused({-3, fence, 0, 0, {}})
end
local maxlen = tonumber(ARGV[8])
local unique, ixfields = {}, {'_fc:ix'}
for name in string.gmatch(ARGV[10], '%S+') do
  if string.sub(name, -1) == '!' then
    name = string.sub(name, 1, -2)
    unique[name] = true
  end
  ixfields[#ixfields + 1] = '_fc:ix:' .. name
end
local function entries(s)
  local t = {}
  if s then for e in string.gmatch(s, '[^\n]+') do t[e] = true end end
  return t
end
-- The index entries ('{index}:{value}') a hash holds, from the values of
-- `ixfields` (field -> value): one field per index ('_fc:ix:{index}',
-- values '\n'-separated), or every entry in '_fc:ix' (the layout before).
local function stored_entries(get)
  local t = entries(get['_fc:ix'])
  for k = 2, #ixfields do
    local v = get[ixfields[k]]
    if v then
      local name = string.sub(ixfields[k], 8)
      for e in string.gmatch(v, '[^\n]+') do t[name .. ':' .. e] = true end
    end
  end
  return t
end
local conflicts, logged = 0, 0
local up, del, skip = 0, 0, 0
-- A unique index is one hash, '_uix:{index}': encoded value -> its first
-- holder. Holders beyond the first (conflicts) wait in the value's sorted
-- set, '_ix:{index}:{value}', the layout every value had before (an
-- older ingest's sets are read and emptied the same way). The hash holds a
-- value whenever the set does, but for sets of an older ingest: an id
-- that takes an empty field meets no other holder.
local uprefix = string.sub(ARGV[7], 1, -5) .. '_uix:'
local function is_unique(e) return unique[string.match(e, '^[^:]+')] end
-- An entry's unique index hash and its field there.
local function unique_slot(e)
  local name = string.match(e, '^[^:]+')
  return uprefix .. name, string.sub(e, #name + 2)
end
local function unique_add(e, id)
  local k, v = unique_slot(e)
  if redis.call('HSETNX', k, v, id) == 1 then return end
  if redis.call('HGET', k, v) == id then return end
  conflicts = conflicts + redis.call('ZADD', ARGV[7] .. e, 0, id)
end
local function unique_rem(e, id)
  local k, v = unique_slot(e)
  if redis.call('HGET', k, v) == id then
    local next = redis.call('ZPOPMIN', ARGV[7] .. e)
    if next[1] then redis.call('HSET', k, v, next[1]) else redis.call('HDEL', k, v) end
  else
    redis.call('ZREM', ARGV[7] .. e, id)
  end
end
local touched = {}
-- The change log entry, in the same atomic step as the data (while the
-- generation is served).
local last_id
local function log_change(op, id, etag)
  if not logging then return end
  last_id = redis.call('XADD', KEYS[4], '*', 'op', op, 'id', id, 'etag', etag)
  logged = logged + 1
end
-- Removes the log's entries up to and including `cut` and records it as
-- the newest removed entry (XINFO's max-deleted-entry-id), so that readers
-- know exactly which cursors have lost changes.
local function trim_through(cut)
  local ms, seq = string.match(cut, '^(%d+)-(%d+)$')
  redis.call('XTRIM', KEYS[4], 'MINID', ms .. '-' .. (tonumber(seq) + 1))
  redis.call('XSETID', KEYS[4], last_id, 'MAXDELETEDID', cut)
end
";

/// Whole states: each record replaces its entity hash.
///
/// KEYS[5..] pairs: an entity hash, then its staging hash (ingest wrote
/// the new state there with a plain HSET, meta and index fields included,
/// in the same pipeline just before this call); from ARGV[11], per pair:
/// id, offset, ttl_ms, etag, mod, index entries ('\n'-separated), `u`
/// (replace) or `d` (delete).
///
/// A replace RENAMEs the staging hash onto the entity's key: the old hash
/// goes in the same step, and the state's fields never cross into Lua (a
/// third of the script's cost when they did). A staging hash that is
/// missing (expired before its script ran) refuses the batch with -4 before
/// anything is written; ingest stages it again.
///
/// A batch holds each key once, so each id once: its index moves and its
/// place in the ids are queued and sent at the end, one command per key
/// touched rather than one per record (the final membership is the same in
/// any order, since no two queued moves are of the same id and key).
pub const REPLACE: &str = r"
local metaq = {'_fc:mod', '_fc:etag'}
for k = 1, #ixfields do metaq[k + 2] = ixfields[k] end
-- Every staging hash this batch will rename must be there.
local staged, want = {}, 0
local c = 11
for i = 6, #KEYS, 2 do
  if ARGV[c + 6] == 'u' and tonumber(ARGV[c + 1]) >= fence then
    staged[#staged + 1] = KEYS[i]
  end
  c = c + 7
end
for i = 1, #staged, 1000 do
  want = want + redis.call('EXISTS', unpack(staged, i, math.min(i + 999, #staged)))
end
if want < #staged then return refused({-4, 0, 0, 0, {}}) end
-- The entries the stored hash holds, from its HMGET reply (nil: none).
local function held(got)
  local byname, any = {}, false
  for k = 1, #ixfields do
    if got[k + 2] then byname[ixfields[k]] = got[k + 2]; any = true end
  end
  if any then return stored_entries(byname) end
  return nil
end
local rem, add, addorder, newids = {}, {}, {}, {}
local function queue_reindex(id, old, new)
  if old then
    for e in pairs(old) do
      if not new[e] then
        rem[e] = rem[e] or {}
        table.insert(rem[e], id)
      end
    end
  end
  for e in pairs(new) do
    if not (old and old[e]) then
      if not add[e] then add[e] = {}; addorder[#addorder + 1] = e end
      table.insert(add[e], 0)
      table.insert(add[e], id)
    end
  end
end
-- ZADD/ZREM of long member lists, in chunks: unpack() of thousands of
-- values overflows Lua's stack.
local function zcall(cmd, key, list)
  local n, from = 0, 1
  while from <= #list do
    local to = math.min(from + 1999, #list)
    n = n + redis.call(cmd, key, unpack(list, from, to))
    from = to + 1
  end
  return n
end
c = 11
for i = 5, #KEYS, 2 do
  local id = ARGV[c]
  local off = tonumber(ARGV[c + 1])
  if off < fence then
    if ARGV[c + 6] == 'u' then redis.call('DEL', KEYS[i + 1]) end
    skip = skip + 1
  elseif ARGV[c + 6] == 'd' then
    local got = redis.call('HMGET', KEYS[i], unpack(metaq))
    redis.call('DEL', KEYS[i])
    queue_reindex(id, held(got), {})
    redis.call('ZREM', KEYS[3], id)
    log_change('d', id, '')
    del = del + 1
  else
    local etag, mod, ix = ARGV[c + 3], ARGV[c + 4], ARGV[c + 5]
    local prev = redis.call('HMGET', KEYS[i], unpack(metaq))
    redis.call('RENAME', KEYS[i + 1], KEYS[i])
    -- Last-Modified never moves backwards for a key that exists.
    if prev[1] and tonumber(prev[1]) and tonumber(mod) and tonumber(prev[1]) > tonumber(mod) then
      redis.call('HSET', KEYS[i], '_fc:mod', prev[1])
    end
    redis.call('PEXPIRE', KEYS[i], ARGV[c + 2])
    queue_reindex(id, held(prev), entries(ix))
    newids[#newids + 1] = 0
    newids[#newids + 1] = id
    -- The same state again (an upstream duplicate) is no change.
    if prev[2] ~= etag then log_change('u', id, etag) end
    up = up + 1
  end
  c = c + 7
end
for e, ids in pairs(rem) do
  if is_unique(e) then
    for _, id in ipairs(ids) do unique_rem(e, id) end
  else
    zcall('ZREM', ARGV[7] .. e, ids)
  end
end
for _, e in ipairs(addorder) do
  if is_unique(e) then
    -- Every id that enters finds another one there, but the first into
    -- an empty entry.
    local q = add[e]
    for j = 2, #q, 2 do unique_add(e, q[j]) end
  else
    zcall('ZADD', ARGV[7] .. e, add[e])
  end
end
zcall('ZADD', KEYS[3], newids)
";

/// Parts of merged entities, and identity links.
///
/// KEYS[5] the entity type's links hash (source id -> canonical id);
/// ARGV[11] entity key prefix (an id appended is its hash), ARGV[12] parts
/// key prefix (an id appended is its parts hash), ARGV[13] the entity's
/// source topics by precedence (highest first, space-separated), ARGV[14]
/// this batch's topic, ARGV[15] `part` or `link`; from ARGV[16], per
/// record: id (as the source names it), offset, ttl_ms, mod, src, then for
/// a part: nmembers (-1 = the source no longer holds the id) and nmembers
/// × (name, name as a JSON string, canonical value, index entries of that
/// member); for a link: the canonical id ('' = unlinked).
///
/// A source's part of id X lives in the parts hash of X's canonical id
/// (its link, else X) as the field `{topic}:{X}` (cmsgpack of the member
/// list); the served members are the union of the parts, the part of the
/// highest-ranked topic winning a member two hold (equal topics: the
/// smaller source id). The ETag is the SHA-1 (hex) of the served canonical
/// body, assembled here from the parts.
pub const MERGE: &str = r"
local eprefix, pprefix, mytopic, mode = ARGV[11], ARGV[12], ARGV[14], ARGV[15]
local links = KEYS[5]
local rank, ranks = {}, 0
for t in string.gmatch(ARGV[13], '%S+') do ranks = ranks + 1; rank[t] = ranks end
local function part_before(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return bytes_lt(a[2], b[2])
end
-- Index moves happen at once here, not queued as in REPLACE: a batch of
-- parts and links may remerge the same canonical id twice.
-- Moves an id from its old index entries to its new ones.
local function reindex(id, old, new)
  for e in pairs(old) do
    if not new[e] then
      if is_unique(e) then
        unique_rem(e, id)
      else
        redis.call('ZREM', ARGV[7] .. e, id)
      end
    end
  end
  for e in pairs(new) do
    if not old[e] then
      if is_unique(e) then
        unique_add(e, id)
      else
        redis.call('ZADD', ARGV[7] .. e, 0, id)
      end
    end
  end
end
-- HSET of a long field list, in chunks: unpack() of thousands of values
-- overflows Lua's stack.
local function hset_all(key, list, from, last)
  while from <= last do
    local to = math.min(from + 999, last)
    redis.call('HSET', key, unpack(list, from, to))
    from = to + 1
  end
end
-- Serves the union of canonical id `id`'s parts, or removes the entity
-- when no source holds it any more; keeps its indexes, its place in the
-- ids and its change log exact.
local function remerge(id, ttl, mod, src)
  local key, pkey = eprefix .. id, pprefix .. id
  local stored = redis.call('HGETALL', pkey)
  local parts = {}
  for i = 1, #stored, 2 do
    local topic, origin = string.match(stored[i], '^([^:]+):(.+)$')
    parts[#parts + 1] = {rank[topic] or (ranks + 1), origin, stored[i + 1]}
  end
  local all = redis.call('HGETALL', key)
  local members, meta = {}, {}
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 4) == '_fc:' then
      meta[all[i]] = all[i + 1]
    else
      members[all[i]] = true
    end
  end
  if #parts == 0 then
    if #all > 0 then
      redis.call('DEL', key)
      reindex(id, stored_entries(meta), {})
      redis.call('ZREM', KEYS[3], id)
      log_change('d', id, '')
      touched[#touched + 1] = id
      del = del + 1
    end
    return
  end
  table.sort(parts, part_before)
  local won, names, ix = {}, {}, {}
  for _, p in ipairs(parts) do
    local q = cmsgpack.unpack(p[3])
    for j = 1, #q, 4 do
      if not won[q[j]] then
        won[q[j]] = {q[j + 1], q[j + 2]}
        names[#names + 1] = q[j]
        for e in string.gmatch(q[j + 3], '[^\n]+') do ix[e] = true end
      end
    end
  end
  table.sort(names, bytes_lt)
  local body, set = {}, {}
  for k, name in ipairs(names) do
    local w = won[name]
    body[k] = w[1] .. ':' .. w[2]
    set[#set + 1] = name
    set[#set + 1] = w[2]
  end
  local etag = redis.sha1hex('{' .. table.concat(body, ',') .. '}')
  -- The index fields: each index's values, sorted, '\n'-separated.
  local ixvals = {}
  for e in pairs(ix) do
    local name, v = string.match(e, '^([^:]+):(.*)$')
    ixvals[name] = ixvals[name] or {}
    table.insert(ixvals[name], v)
  end
  for f in pairs(members) do
    if not won[f] then redis.call('HDEL', key, f) end
  end
  local changed = meta['_fc:etag'] ~= etag
  set[#set + 1] = '_fc:etag'
  set[#set + 1] = etag
  set[#set + 1] = '_fc:src'
  set[#set + 1] = src
  -- Last-Modified moves with the served state only, never backwards.
  if changed or not meta['_fc:mod'] then
    local m = tonumber(mod) or 0
    local prev = tonumber(meta['_fc:mod'])
    if prev and prev > m then m = prev end
    set[#set + 1] = '_fc:mod'
    set[#set + 1] = string.format('%d', m)
  end
  for k, f in ipairs(ixfields) do
    local vals = ixvals[string.sub(f, 8)]
    if k > 1 and vals then
      table.sort(vals, bytes_lt)
      set[#set + 1] = f
      set[#set + 1] = table.concat(vals, '\n')
    elseif meta[f] then
      redis.call('HDEL', key, f)
    end
  end
  hset_all(key, set, 1, #set)
  redis.call('PEXPIRE', key, ttl)
  redis.call('PEXPIRE', pkey, ttl)
  reindex(id, stored_entries(meta), ix)
  redis.call('ZADD', KEYS[3], 0, id)
  if changed then
    log_change('u', id, etag)
    touched[#touched + 1] = id
    up = up + 1
  end
end
local c = 16
while c <= #ARGV do
  local id, off, ttl, mod, src = ARGV[c], tonumber(ARGV[c + 1]), ARGV[c + 2], ARGV[c + 3], ARGV[c + 4]
  local n = 0
  if mode == 'part' then n = tonumber(ARGV[c + 5]) end
  if off < fence then
    skip = skip + 1
  elseif mode == 'link' then
    -- Every part named `id` moves from its old canonical id's parts to the
    -- new one's; both are served again from what they hold then.
    local old = redis.call('HGET', links, id) or id
    local new = ARGV[c + 5]
    if new == '' then new = id end
    if new == id then
      redis.call('HDEL', links, id)
    else
      redis.call('HSET', links, id, new)
    end
    if old ~= new then
      local okey, nkey = pprefix .. old, pprefix .. new
      local stored = redis.call('HGETALL', okey)
      local moved = false
      for i = 1, #stored, 2 do
        if string.match(stored[i], '^[^:]+:(.+)$') == id then
          redis.call('HDEL', okey, stored[i])
          redis.call('HSET', nkey, stored[i], stored[i + 1])
          moved = true
        end
      end
      if moved then
        remerge(old, ttl, mod, src)
        remerge(new, ttl, mod, src)
      end
    end
  else
    local canon = redis.call('HGET', links, id) or id
    local pkey = pprefix .. canon
    local field = mytopic .. ':' .. id
    if n < 0 then
      if redis.call('HDEL', pkey, field) == 1 then remerge(canon, ttl, mod, src) end
    else
      local q = {}
      for j = 1, 4 * n do q[j] = ARGV[c + 5 + j] end
      local packed = cmsgpack.pack(q)
      if redis.call('HGET', pkey, field) == packed then
        redis.call('PEXPIRE', pkey, ttl)
        redis.call('PEXPIRE', eprefix .. canon, ttl)
      else
        redis.call('HSET', pkey, field, packed)
        remerge(canon, ttl, mod, src)
      end
    end
  end
  if mode == 'link' then c = c + 6 elseif n > 0 then c = c + 6 + 4 * n else c = c + 6 end
end
";

/// Change log retention (by length, in steps so that trimming is
/// amortised, and by age) and the partition's new offset.
pub const EPILOGUE: &str = r"
if logged > 0 then
  if maxlen > 0 then
    local len = redis.call('XLEN', KEYS[4])
    if len > maxlen + math.max(100, math.floor(maxlen / 10)) then
      local old = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', len - maxlen)
      trim_through(old[#old][1])
    end
  end
  local maxage = tonumber(ARGV[9])
  if maxage > 0 then
    local t = redis.call('TIME')
    local minms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - maxage
    local first = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)
    if first[1] and tonumber(string.match(first[1][1], '^(%d+)')) < minms then
      local cut = redis.call('XREVRANGE', KEYS[4], '(' .. minms .. '-0', '-', 'COUNT', 1)
      if cut[1] then trim_through(cut[1][1]) end
    end
  end
end
if tonumber(ARGV[3]) > fence then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
end
return {up, del, skip, conflicts, touched}
";
