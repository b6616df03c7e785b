-- Auto-routing from this Orthanc (the PACS side) to the interop AI node.
--
-- When a study becomes stable (no new instance for "StableAge" seconds), send the
-- instances of that study that the AI node has not had yet to the DICOM modality
-- named in "InteropAutoRoute.Modality" (default "interop"), as an asynchronous
-- Orthanc job (C-STORE, PS3.4 Annex B).
--
-- Results never bounce back: the AI node writes its SR/SEG/heat-maps into the same
-- study, which makes the study "stable" again. An instance is NOT forwarded when
--   * it was received over DICOM from one of our own AE titles
--     (instance metadata "RemoteAET" in "InteropAutoRoute.OwnAets", default INTEROP), or
--   * its series' Manufacturer is one of "InteropAutoRoute.OwnManufacturers"
--     (default "interop", what every object the node writes carries; this catches
--     results that came back by DICOMweb STOW-RS or REST, which carry no AET,
--     whatever their SOP class: an SR, a SEG, a Secondary Capture heat-map), or
--   * its SOP Class UID starts with one of "InteropAutoRoute.SkipSopClassPrefixes"
--     (default: every SR kind and KO 1.2.840.10008.5.1.4.1.1.88., SEG and other
--     derived non-images 1.2.840.10008.5.1.4.1.1.66., presentation states
--     1.2.840.10008.5.1.4.1.1.11.), or its series' Modality is one of
--     "InteropAutoRoute.SkipModalities" (default SR, SEG, PR, KO): results and
--     annotations are never AI input, whoever made them, or
--   * it was already handed to a forwarding job that succeeded or is still running
--     (user metadata "ForwardedToInterop" holds that job's id).
-- Instances whose forwarding job failed (or was cancelled) are sent again the next
-- time their study becomes stable; the AI node is idempotent, so a repeat is harmless.
--
-- Settings come from the "InteropAutoRoute" section of the Orthanc configuration;
-- the metadata name must be declared in "UserMetadata".

-- Upper case without surrounding spaces (DICOM pads strings; people vary case).
local function Normalize(value)
  return string.upper((value or ''):match('^%s*(.-)%s*$'))
end

local function StartsWithAny(value, prefixes)
  for _, p in ipairs(prefixes) do
    if string.sub(value, 1, string.len(p)) == p then
      return true
    end
  end
  return false
end

local function ReadSettings()
  local all = GetOrthancConfiguration() or {}
  local c = all['InteropAutoRoute'] or {}
  local s = {
    enabled = (c['Enabled'] ~= false),
    modality = c['Modality'] or 'interop',
    ownAets = {},
    ownManufacturers = {},
    skipModalities = {},
    skipSopClassPrefixes = c['SkipSopClassPrefixes'] or {
      '1.2.840.10008.5.1.4.1.1.88.', '1.2.840.10008.5.1.4.1.1.66.', '1.2.840.10008.5.1.4.1.1.11.' },
    mark = c['ForwardedMetadata'] or 'ForwardedToInterop',
  }
  for _, aet in ipairs(c['OwnAets'] or { 'INTEROP' }) do
    s.ownAets[Normalize(aet)] = true
  end
  for _, m in ipairs(c['OwnManufacturers'] or { 'interop' }) do
    s.ownManufacturers[Normalize(m)] = true
  end
  for _, m in ipairs(c['SkipModalities'] or { 'SR', 'SEG', 'PR', 'KO' }) do
    s.skipModalities[string.upper(m)] = true
  end
  return s
end

local SETTINGS = ReadSettings()

-- Orthanc's REST answer as a Lua table, or nil when the call fails.
local function GetJson(uri)
  local ok, body = pcall(RestApiGet, uri, true)
  if not ok or body == nil or body == '' then
    return nil
  end
  local ok2, value = pcall(ParseJson, body)
  if not ok2 then
    return nil
  end
  return value
end

-- State of an Orthanc job ("Pending", "Running", "Success", "Failure", ...),
-- or nil when Orthanc no longer knows it (history evicted, restart without SaveJobs).
local function JobState(jobId, cache)
  if cache[jobId] == nil then
    local job = GetJson('/jobs/' .. jobId)
    cache[jobId] = (job and job['State']) or false
  end
  return cache[jobId] or nil
end

-- Was this instance already handed to the AI node by a job that did not fail?
local function AlreadyForwarded(metadata, jobStates)
  local jobId = metadata[SETTINGS.mark]
  if jobId == nil or jobId == '' then
    return false
  end
  local state = JobState(jobId, jobStates)
  -- Unknown job: assume it succeeded (re-sending everything after a restart
  -- would be harmless but wasteful).
  return state ~= 'Failure'
end

function OnStableStudy(studyId, tags, metadata)
  if not SETTINGS.enabled then
    return
  end

  local series = GetJson('/studies/' .. studyId .. '/series')
  if series == nil then
    print('interop autoroute: study ' .. studyId .. ' vanished before routing')
    return
  end

  local toSend = {}
  local own, skippedModality, done = 0, 0, 0
  local jobStates = {}
  for _, s in ipairs(series) do
    local modality = Normalize((s['MainDicomTags'] or {})['Modality'])
    local ownSeries = SETTINGS.ownManufacturers[Normalize((s['MainDicomTags'] or {})['Manufacturer'])]
    for _, instanceId in ipairs(s['Instances'] or {}) do
      local md = GetJson('/instances/' .. instanceId .. '/metadata?expand') or {}
      if ownSeries or SETTINGS.ownAets[Normalize(md['RemoteAET'])] then
        own = own + 1
      elseif SETTINGS.skipModalities[modality] or
          StartsWithAny(md['SopClassUid'] or '', SETTINGS.skipSopClassPrefixes) then
        skippedModality = skippedModality + 1
      elseif AlreadyForwarded(md, jobStates) then
        done = done + 1
      else
        table.insert(toSend, instanceId)
      end
    end
  end

  local uid = (tags and tags['StudyInstanceUID']) or studyId
  if #toSend == 0 then
    print(string.format('interop autoroute: study %s stable, nothing new to send ' ..
      '(%d ours by AE or manufacturer, %d results by modality/SOP class, %d already forwarded)',
      uid, own, skippedModality, done))
    return
  end

  local request = {
    Resources = toSend,
    Synchronous = false,
    Permissive = false,
  }
  local ok, answer = pcall(RestApiPost, '/modalities/' .. SETTINGS.modality .. '/store',
    DumpJson(request, true), true)
  if not ok or answer == nil then
    print('interop autoroute: could not queue study ' .. uid .. ' for modality "' ..
      SETTINGS.modality .. '": ' .. tostring(answer))
    return
  end
  local job = ParseJson(answer)
  local jobId = job['ID']
  for _, instanceId in ipairs(toSend) do
    RestApiPut('/instances/' .. instanceId .. '/metadata/' .. SETTINGS.mark, jobId, true)
  end
  print(string.format('interop autoroute: study %s: job %s sends %d instance(s) to "%s" ' ..
    '(%d ours by AE or manufacturer, %d results by modality/SOP class, %d already forwarded)',
    uid, jobId, #toSend, SETTINGS.modality, own, skippedModality, done))
end

function OnJobFailure(jobId)
  local job = GetJson('/jobs/' .. jobId)
  if job ~= nil and job['Type'] == 'DicomModalityStore' then
    local content = job['Content'] or {}
    print(string.format('interop autoroute: job %s (%s) FAILED: %s; its instances are sent again ' ..
      'when their study next becomes stable, or now with POST /jobs/%s/resubmit',
      jobId, tostring(content['Description'] or ''), tostring(job['ErrorDescription'] or ''), jobId))
  end
end
