-- Argo CD health check for APX resources (apx.dev Product, Route, PolicyBundle).
-- One script, three identical copies (Argo CD wants one per kind under
-- resource.customizations.health.apx.dev_<Kind>); tests/chart checks they stay identical
-- and runs charts/apx/health/testdata/*.yaml through it with a real Lua 5.1 interpreter.
--
-- The operator writes kstatus conditions (Ready / Reconciling / Stalled) and
-- observedGeneration. Order of the checks:
--   1. no status yet, or observedGeneration behind metadata.generation -> Progressing
--      (conditions of an older generation say nothing about the current spec);
--   2. Stalled=True -> Degraded, with the condition's message (it names the field at fault);
--   3. Routes: a canary in progress (status.canary.phase Progressing) -> Progressing with its
--      weight; a halted canary -> Suspended (waits for a human, like a paused Argo Rollout);
--      a rolled-back canary -> Degraded (the spec asks for a version that failed analysis);
--   4. Reconciling=True -> Progressing;
--   5. Ready=True -> Healthy; otherwise Progressing.
local hs = {}

local function condition(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local function number(n)
  return string.format("%d", math.floor(tonumber(n) or 0))
end

local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the APX operator to reconcile"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the APX operator to observe generation " .. number(generation)
    .. " (observed " .. number(status.observedGeneration) .. ")"
  return hs
end

local conditions = status.conditions
local stalled = condition(conditions, "Stalled")
if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = text(stalled, "Stalled")
  return hs
end

local canary = status.canary
if obj.kind == "Route" and canary ~= nil then
  local weight = number(canary.weight)
  local reason = ""
  if canary.lastDecision ~= nil and canary.lastDecision.reason ~= nil and canary.lastDecision.reason ~= "" then
    reason = ": " .. canary.lastDecision.reason
  end
  if canary.phase == "Progressing" then
    hs.status = "Progressing"
    local step = "step " .. number((canary.step or 0) + 1)
    local spec_canary = obj.spec and obj.spec.canary
    if spec_canary ~= nil and spec_canary.steps ~= nil then
      step = step .. " of " .. number(#spec_canary.steps)
    end
    hs.message = "Canary at " .. weight .. "% (" .. step .. ")"
    return hs
  elseif canary.phase == "Halted" then
    hs.status = "Suspended"
    hs.message = "Canary halted at " .. weight .. "%" .. reason
    return hs
  elseif canary.phase == "RolledBack" then
    hs.status = "Degraded"
    hs.message = "Canary rolled back" .. reason
    return hs
  end
end

local reconciling = condition(conditions, "Reconciling")
if is_true(reconciling) then
  hs.status = "Progressing"
  hs.message = text(reconciling, "Reconciling")
  return hs
end

local ready = condition(conditions, "Ready")
if is_true(ready) then
  hs.status = "Healthy"
  hs.message = text(ready, "Ready")
  return hs
end

hs.status = "Progressing"
hs.message = text(ready, "Waiting for the Ready condition")
return hs
