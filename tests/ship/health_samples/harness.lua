-- Runs deploy/argocd/health.lua the way Argo CD does: a global `obj`, the chunk's return value
-- is the health. Usage: lua5.4 harness.lua HEALTH_SCRIPT OBJECT_FILE (a Lua file returning obj).
local script, objfile = arg[1], arg[2]
obj = assert(loadfile(objfile))()
local hs = assert(loadfile(script))()
io.write(tostring(hs.status), "\n", tostring(hs.message), "\n")
