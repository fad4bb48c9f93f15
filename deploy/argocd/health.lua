-- Argo CD health check for trtops.dev/TrtEngine (resource.customizations.health.trtops.dev_TrtEngine).
-- Argo CD sets the global `obj` (the live resource) and uses the table this chunk returns.
-- Written for Lua 5.1 (Argo CD's gopher-lua): no integer division, goto or bit operators, and
-- only the base and table libraries (Argo CD opens no string or math library for an argocd-cm
-- script).
--
--   Degraded     RolledBack=True (the canary was rolled back: Git still asks for the bad revision),
--                Degraded=True, or Built=False because a build failed
--   Suspended    the rollout is paused (a Paused=True condition or status.canary.paused)
--   Progressing  the operator has not seen this generation yet, a build or rollout is under way
--                (Progressing=True), or a canary is taking traffic
--   Healthy      Ready=True and no canary in flight
local hs = {}

-- The table Argo CD reads: status (Healthy, Progressing, Degraded, Suspended) and message.
local function health(status, message)
  hs.status = status
  hs.message = message
  return hs
end

local function conditions(status)
  local byType = {}
  if status ~= nil and status.conditions ~= nil then
    for _, c in ipairs(status.conditions) do
      if c.type ~= nil then
        byType[c.type] = c
      end
    end
  end
  return byType
end

local function is(c, value)
  return c ~= nil and c.status == value
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local text = c.message
  if text == nil or text == "" then
    text = fallback
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason .. ": " .. text
  end
  return text
end

local status = obj.status
-- tonumber: Argo CD hands a JSON number over as a string when it was decoded as json.Number, and
-- strings compare as text ("9" < "10" is false).
local generation = tonumber(obj.metadata and obj.metadata.generation)
if status == nil then
  return health("Progressing", "waiting for the operator")
end
local observed = tonumber(status.observedGeneration)
if generation ~= nil and (observed == nil or observed < generation) then
  local waiting = "waiting for the operator to observe generation " .. tostring(generation)
  return health("Progressing", waiting)
end

local c = conditions(status)
local canary = status.canary
-- Reasons of Built=False that are progress, not failure.
local building = { Building = true, Pending = true, Waiting = true }

if is(c.RolledBack, "True") then
  return health("Degraded", describe(c.RolledBack, "the canary was rolled back"))
end
if is(c.Degraded, "True") then
  return health("Degraded", describe(c.Degraded, "degraded"))
end
if is(c.Built, "False") and c.Built.reason ~= nil and not building[c.Built.reason] then
  return health("Degraded", describe(c.Built, "the build failed"))
end
if is(c.Paused, "True") or (canary ~= nil and canary.paused == true) then
  return health("Suspended", describe(c.Paused, "the rollout is paused"))
end
if is(c.Progressing, "True") then
  return health("Progressing", describe(c.Progressing, "in progress"))
end
local weight = canary ~= nil and tonumber(canary.weight) or 0
if canary ~= nil and canary.revision ~= nil and canary.revision ~= "" and weight > 0 then
  local share = "canary " .. tostring(canary.revision) .. " at " .. tostring(weight) .. "%"
  return health("Progressing", share)
end
if is(c.Ready, "True") then
  return health("Healthy", describe(c.Ready, "ready"))
end
return health("Progressing", describe(c.Ready, "waiting for the engine to become ready"))
