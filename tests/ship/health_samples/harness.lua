-- Runs deploy/argocd/health.lua the way Argo CD does (util/lua/lua.go, runLua): a global `obj`, the
-- chunk's return value is the health. Works under lua5.1 and lua5.4.
-- Usage: lua5.1 harness.lua HEALTH_SCRIPT OBJECT_FILE (a Lua file returning obj).
--
-- Argo CD runs a health script from argocd-cm in gopher-lua with SkipOpenLibs (unless
-- resource.customizations.useOpenLibs.<group_kind> is set): only the base, package and table
-- libraries and an os with just time and date. No string or math library, and so no string
-- methods either ("x"):sub(...). The script gets the same environment here, so whatever needs
-- more fails in the tests instead of in Argo CD.
local script, objfile = arg[1], arg[2]
local write = io.write

local env = { obj = assert(loadfile(objfile))() }
-- gopher-lua's base library, as far as the interpreter running this has it (5.4 lacks unpack).
for _, name in ipairs({
  "assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget",
  "rawset", "select", "setmetatable", "tonumber", "tostring", "type", "unpack", "xpcall",
  "require", "print", "_VERSION",
}) do
  env[name] = _G[name]
end
env._G = env
-- The table functions Lua 5.1 and gopher-lua share (no table.unpack, table.pack, table.move).
env.table = { concat = table.concat, insert = table.insert, remove = table.remove, sort = table.sort }
env.os = { time = os.time, date = os.date }
-- Without the string library the string metatable has no __index: ("x"):upper() is an error.
getmetatable("").__index = nil

local chunk
if setfenv ~= nil then -- Lua 5.1
  chunk = assert(loadfile(script))
  setfenv(chunk, env)
else
  chunk = assert(loadfile(script, "t", env))
end
local hs = chunk()
if type(hs) ~= "table" then
  error("expect table output from Lua script, not " .. type(hs))
end
write(tostring(hs.status), "\n", tostring(hs.message), "\n")
