-- Argo CD health check for trtops.dev/TrtEngine (resource.customizations.health.trtops.dev_TrtEngine).
-- Argo CD sets the global `obj` (the live resource) and uses the table this chunk returns.
-- Written for Lua 5.1 (Argo CD's gopher-lua): no integer division, goto or bit operators.
--
--   Degraded     RolledBack=True (the canary was rolled back: Git still asks for the bad revision),
--                Degraded=True, or Built=False because a build failed
--   Suspended    the rollout is paused (a Paused=True condition or status.canary.paused)
--   Progressing  the operator has not seen this generation yet, a build or rollout is under way
--                (Progressing=True), or a canary is taking traffic
--   Healthy      Ready=True and no canary in flight
local hs = {}

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
local generation = obj.metadata and obj.metadata.generation
if status == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local c = conditions(status)
local canary = status.canary
-- Reasons of Built=False that are progress, not failure.
local building = { Building = true, Pending = true, Waiting = true }

if is(c.RolledBack, "True") then
  hs.status = "Degraded"
  hs.message = describe(c.RolledBack, "the canary was rolled back")
  return hs
end
if is(c.Degraded, "True") then
  hs.status = "Degraded"
  hs.message = describe(c.Degraded, "degraded")
  return hs
end
if is(c.Built, "False") and c.Built.reason ~= nil and not building[c.Built.reason] then
  hs.status = "Degraded"
  hs.message = describe(c.Built, "the build failed")
  return hs
end
if is(c.Paused, "True") or (canary ~= nil and canary.paused == true) then
  hs.status = "Suspended"
  hs.message = describe(c.Paused, "the rollout is paused")
  return hs
end
if is(c.Progressing, "True") then
  hs.status = "Progressing"
  hs.message = describe(c.Progressing, "in progress")
  return hs
end
if canary ~= nil and canary.revision ~= nil and canary.revision ~= "" and (canary.weight or 0) > 0 then
  hs.status = "Progressing"
  hs.message = "canary " .. canary.revision .. " at " .. tostring(canary.weight or 0) .. "%"
  return hs
end
if is(c.Ready, "True") then
  hs.status = "Healthy"
  hs.message = describe(c.Ready, "ready")
  return hs
end
hs.status = "Progressing"
hs.message = describe(c.Ready, "waiting for the engine to become ready")
return hs
