-- accum for one bucket, TFRA's BP-v2 rule (its HMACCUM module) as a script, so stock Redis
-- servers need no module. KEYS[1] = bucket; ARGV[1] = TF dtype name; ARGV[2] = one flag byte
-- per field (1 = the caller saw the key); then field, delta pairs. ARGV[1] may end in '+slots'
-- (a redis_fused_row table): a stored value may then hold optimizer slots after the row, which
-- the add keeps as they are.
--   present, flagged     -> element-wise old + delta (integers wrap)
--   present, not flagged -> unchanged (someone else created it meanwhile)
--   absent, not flagged  -> set to the value
--   absent, flagged      -> nothing (someone removed it meanwhile)
local key = KEYS[1]
local dtype = ARGV[1]
local keep_slots = false
if string.sub(dtype, -6) == '+slots' then
  dtype = string.sub(dtype, 1, -7)
  keep_slots = true
end
local flags = ARGV[2]
local n = (#ARGV - 2) / 2
if #flags ~= n then
  return redis.error_reply('ERR accum: exists has ' .. #flags .. ' flags for ' .. n .. ' fields')
end

local function add_float(a, b, fmt, width)
  local out = {}
  for off = 1, #a, width do
    local x = struct.unpack(fmt, a, off)
    local y = struct.unpack(fmt, b, off)
    out[#out + 1] = struct.pack(fmt, x + y)
  end
  return table.concat(out)
end

-- Lua numbers are doubles, so integers are added in 32-bit limbs to stay exact and wrap.
local function add_u32_limbs(a, b, limbs)
  local out = {}
  local width = 4 * limbs
  for off = 1, #a, width do
    local carry = 0
    for l = 0, limbs - 1 do
      local x = struct.unpack('<I4', a, off + 4 * l)
      local y = struct.unpack('<I4', b, off + 4 * l)
      local s = x + y + carry
      if s >= 4294967296 then
        s = s - 4294967296
        carry = 1
      else
        carry = 0
      end
      out[#out + 1] = struct.pack('<I4', s)
    end
  end
  return table.concat(out)
end

local function add_u8(a, b)
  local out = {}
  for i = 1, #a do
    out[i] = string.char((string.byte(a, i) + string.byte(b, i)) % 256)
  end
  return table.concat(out)
end

local function add(a, b)
  if dtype == 'float' then
    return add_float(a, b, '<f', 4)
  elseif dtype == 'double' then
    return add_float(a, b, '<d', 8)
  elseif dtype == 'int32' then
    return add_u32_limbs(a, b, 1)
  elseif dtype == 'int64' then
    return add_u32_limbs(a, b, 2)
  elseif dtype == 'int8' then
    return add_u8(a, b)
  end
  return nil
end

if dtype ~= 'float' and dtype ~= 'double' and dtype ~= 'int32' and dtype ~= 'int64' and dtype ~= 'int8' then
  return redis.error_reply('ERR accum: unsupported value type ' .. dtype)
end

for i = 1, n do
  local field = ARGV[1 + 2 * i]
  local delta = ARGV[2 + 2 * i]
  local flagged = string.byte(flags, i) ~= 0
  local old = redis.call('HGET', key, field)
  if old then
    if flagged and #old == #delta then
      redis.call('HSET', key, field, add(old, delta))
    elseif flagged and keep_slots and #delta > 0 and #old > #delta and #old % #delta == 0 then
      local row = string.sub(old, 1, #delta)
      redis.call('HSET', key, field, add(row, delta) .. string.sub(old, #delta + 1))
    end
  elseif not flagged then
    redis.call('HSET', key, field, delta)
  end
end
return n
