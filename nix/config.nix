# What the options of ./options.nix mean for the supervisor: its config file
# (the TOML of docs/design.md#the-config-file) and the checks the option types cannot express.
# module.nix and ./image.nix both use it, so the same settings give the same
# config file on a NixOS host and in a container.
{ lib }:
let
  inherit (lib) optionalAttrs;

  # Model kinds each flavor uses (docs/design.md#the-config-file); the supervisor knows the
  # folders, the module only needs the names for its assertion.
  kindsOf = rec {
    a1111 = [
      "checkpoints"
      "loras"
      "vae"
      "embeddings"
      "controlnet"
      "upscalers"
      "hypernetworks"
    ];
    forge = a1111 ++ [ "text_encoders" ];
    comfyui = forge ++ [
      "diffusion_models"
      "clip_vision"
    ];
  };

  # Flags the supervisor sets itself from other options; passing them in
  # extraArgs would make the UI disagree with what the supervisor probes.
  managedFlags = {
    "--port" = "port";
    "--listen" = "listen";
    "--server-name" = "listen";
    "--data-dir" = "dataDir";
    "--base-directory" = "dataDir";
    "--api-auth" = "apiAuthFile";
  };
  flagName = arg: builtins.head (lib.splitString "=" arg);

  nonEmpty = lib.filterAttrs (_: v: v != { });
  isPlainName = n: n != "" && builtins.match "[.].*|.*/.*" n == null;
  badNames = names: builtins.filter (n: !isPlainName n) (builtins.attrNames names);
  controlSocket = "/run/sd-webui-forge/control.sock";
  # Declared images: the TOML keys of [images.<name>] (an inline workflow is
  # already a store file, see ./options.nix).
  imageToml =
    img:
    lib.filterAttrs (_: v: v != null && v != { }) {
      inherit (img)
        prompt
        seed
        steps
        width
        height
        checkpoint
        extra
        inputs
        workflow
        ;
      negative_prompt = img.negativePrompt;
      cfg_scale = img.cfgScale;
      sampler_name = img.samplerName;
    };
  # [instances.<name>]: the keys of one instance, empty lists and maps and a
  # null port left out (the supervisor's defaults: none, and a picked port).
  instanceToml =
    inst:
    lib.filterAttrs (_: v: v != null && v != [ ] && v != { }) {
      inherit (inst) gpus environment port;
      extra_args = inst.extraArgs;
    };
  # [front] of the config file: only the keys the options set, so a default
  # config has no [front] and the supervisor's own defaults apply.
  frontToml =
    { cfg, credentialPath }:
    let
      f = cfg.front;
    in
    lib.filterAttrs (_: v: v != null) {
      enable = if f.enable then null else false;
      hold_timeout = f.holdTimeout;
      max_held = f.maxHeld;
      max_connections = f.maxConnections;
      auth_file = if f.authFile == null then null else credentialPath "front-auth";
      ui_port = f.uiPort;
    };
  flavorsFor = kind: builtins.filter (f: builtins.elem kind kindsOf.${f}) (builtins.attrNames kindsOf);

  # Models the supervisor downloads at run time are attribute sets; paths and
  # packages are strings once merged (the option type coerces them).
  isDownload = builtins.isAttrs;
  # One credential per distinct token file, named by its path's hash so the
  # id is a valid file name whatever the model is called.
  tokenId = file: "download-token-${builtins.substring 0 16 (builtins.hashString "sha256" file)}";
  downloadsOf =
    cfg:
    lib.concatMap (kind: builtins.filter isDownload (builtins.attrValues cfg.models.${kind})) (
      builtins.attrNames cfg.models
    );
  tokenFilesOf =
    cfg: lib.unique (builtins.filter (f: f != null) (map (d: d.tokenFile) (downloadsOf cfg)));
  renderModel =
    credentialPath: v:
    if isDownload v then
      {
        inherit (v) url sha256;
        token_header = v.tokenHeader;
      }
      // optionalAttrs (v.tokenFile != null) { token_file = credentialPath (tokenId v.tokenFile); }
    else
      v;
in
{
  # The download token files of `cfg` as credentials: id -> file on the host.
  downloadCredentials =
    cfg: lib.listToAttrs (map (f: lib.nameValuePair (tokenId f) f) (tokenFilesOf cfg));

  # Where the supervisor's control socket is, on a host and in a container.
  inherit controlSocket;

  # The config file's content for `cfg` (config.services.sd-webui-forge).
  # credentialPath: where the process finds the file for a secret
  # ("api-auth", "control-token", "front-auth") at run time: systemd's credentials
  # directory on a host, a mounted secret in a container. dbus: overrides
  # control.dbus (a container has no system bus).
  toml =
    {
      cfg,
      credentialPath,
      dbus ? cfg.control.dbus,
    }:
    nonEmpty {
      ui = {
        inherit (cfg)
          flavor
          command
          listen
          port
          ;
        extra_args = cfg.extraArgs;
        environment = {
          # Python buffers stdout when it is a pipe, which hides the UI's log
          # lines from the journal until the buffer fills.
          PYTHONUNBUFFERED = "1";
        }
        // cfg.environment;
        startup_timeout = cfg.startupTimeout;
        stop_timeout = cfg.stopTimeout;
      }
      // optionalAttrs (cfg.gpus != null) { inherit (cfg) gpus; }
      // optionalAttrs (cfg.apiAuthFile != null) { api_auth_file = credentialPath "api-auth"; };
      data = {
        dir = cfg.dataDir;
        permissions = cfg.dataPermissions;
      };
      models = nonEmpty (builtins.mapAttrs (_: builtins.mapAttrs (_: renderModel credentialPath)) cfg.models);
      downloads = optionalAttrs (downloadsOf cfg != [ ] || cfg.downloads.maxConcurrent != 2) {
        max_concurrent = cfg.downloads.maxConcurrent;
      };
      inherit (cfg) extensions settings;
      images = lib.mapAttrs (_: imageToml) cfg.images;
      restart = {
        inherit (cfg.restart) policy deadline;
        idle_grace = cfg.restart.idleGrace;
        poll_interval = cfg.restart.pollInterval;
      };
      control = {
        socket = controlSocket;
        inherit dbus;
        max_connections = cfg.control.maxConnections;
      }
      // optionalAttrs (cfg.control.httpListen != null) {
        http_listen = cfg.control.httpListen;
        token_file = credentialPath "control-token";
      };
      front = frontToml { inherit cfg credentialPath; };
      # [gpu]: only what differs from the supervisor's defaults.
      gpu =
        optionalAttrs (!cfg.gpu.inhibitSleep) { inhibit_sleep = false; }
        // optionalAttrs (cfg.gpu.unloadAfter != null) { unload_after = cfg.gpu.unloadAfter; };
      # [health]: only what the options set.
      health = lib.filterAttrs (_: v: v != null) {
        stall_timeout = cfg.health.stallTimeout;
        stall_grace = cfg.health.stallGrace;
        gpu_errors = cfg.health.gpuErrors;
      };
      # [kubernetes]: only when on (the supervisor's default is off).
      kubernetes = optionalAttrs cfg.kubernetes.podDeletionCost { pod_deletion_cost = true; };
      # [queue]: only what the options set.
      queue = lib.filterAttrs (_: v: v != null) {
        keep = cfg.queue.keep;
        history = cfg.queue.history;
      };
      # [instances.<name>]: one table per instance; none without instances.
      instances = lib.mapAttrs (_: instanceToml) cfg.instances;
    };

  # [front]: only what the options set; the supervisor's defaults apply to the rest.
  inherit frontToml;

  # The checks on `cfg` beyond the option types, as NixOS assertions.
  assertions =
    cfg:
    let
      unusedKinds = builtins.filter (k: !builtins.elem k kindsOf.${cfg.flavor}) (
        builtins.attrNames cfg.models
      );
      misplacedFlags = builtins.filter (a: managedFlags ? ${flagName a}) cfg.extraArgs;
      badImageNames = builtins.filter (n: builtins.match "[A-Za-z0-9_][A-Za-z0-9_.-]*" n == null) (
        builtins.attrNames cfg.images
      );
      isComfy = cfg.flavor == "comfyui";
      # [instances]: what the supervisor refuses with them, and their own
      # checks, each with the option to change.
      hasInstances = cfg.instances != { };
      instanceNames = builtins.attrNames cfg.instances;
      badInstanceNames = builtins.filter (
        n: builtins.match "[A-Za-z0-9][A-Za-z0-9_-]*" n == null || builtins.stringLength n > 32
      ) instanceNames;
      # Every (instance, GPU) pair, in name order; one whose GPU an earlier
      # pair already has (another instance's, or the same one's) is shared.
      instanceGpus = lib.concatMap (
        n:
        map (gpu: {
          name = n;
          inherit gpu;
        }) cfg.instances.${n}.gpus
      ) instanceNames;
      sharedGpus = lib.concatLists (
        lib.imap0 (
          i: p:
          let
            earlier = builtins.filter (q: q.gpu == p.gpu) (lib.take i instanceGpus);
          in
          lib.optional (earlier != [ ]) (p // { first = (builtins.head earlier).name; })
        ) instanceGpus
      );
      # A pinned port that is the front door's or an earlier instance's.
      pinned = builtins.filter (n: cfg.instances.${n}.port != null) instanceNames;
      portClashes = lib.concatLists (
        lib.imap0 (
          i: n:
          let
            port = cfg.instances.${n}.port;
            earlier = builtins.filter (m: cfg.instances.${m}.port == port) (lib.take i pinned);
          in
          if port == cfg.port then
            [ "services.sd-webui-forge.instances.${n}.port: ${toString port} is services.sd-webui-forge.port, where the front door listens; pick a private port (or leave it null to have one picked)." ]
          else
            lib.optional (earlier != [ ])
              "services.sd-webui-forge.instances.${n}.port: ${toString port} is instance ${builtins.head earlier}'s port too; give each instance a port of its own (or leave it null to have one picked)."
        ) pinned
      );
      instanceFlags = lib.concatMap (
        n: map (a: { inherit n a; }) (builtins.filter (a: managedFlags ? ${flagName a}) cfg.instances.${n}.extraArgs)
      ) instanceNames;
      instanceCuda = builtins.filter (n: cfg.instances.${n}.environment ? CUDA_VISIBLE_DEVICES) instanceNames;
      misdeclaredImages = lib.filterAttrs (
        _: img:
        if isComfy then
          img.workflow == null || img.prompt != null
        else
          img.prompt == null || img.workflow != null
      ) cfg.images;
    in
    [
      {
        assertion = badImageNames == [ ];
        message = lib.concatMapStringsSep "\n" (
          n:
          ''services.sd-webui-forge.images."${n}": an image name becomes <name>.png: letters, digits, "-", "_" or ".", not starting with "." or "-".''
        ) badImageNames;
      }
      {
        assertion = misdeclaredImages == { };
        message = lib.concatMapStringsSep "\n" (
          n:
          if isComfy then
            "services.sd-webui-forge.images.${n}: a comfyui image is a workflow (set workflow, and inputs for overrides), not a prompt."
          else
            "services.sd-webui-forge.images.${n}: a ${cfg.flavor} image needs a prompt (txt2img parameters); workflow is for comfyui."
        ) (builtins.attrNames misdeclaredImages);
      }
      {
        assertion = unusedKinds == [ ];
        message = lib.concatMapStringsSep "\n" (
          kind:
          let
            flavors = flavorsFor kind;
          in
          "services.sd-webui-forge.models.${kind}: flavor \"${cfg.flavor}\" does not use model kind \"${kind}\"; "
          + (
            if flavors == [ ] then
              "no flavor uses it. "
            else
              "it is used by ${lib.concatStringsSep ", " flavors}. "
          )
          + "Kinds for ${cfg.flavor}: ${lib.concatStringsSep ", " kindsOf.${cfg.flavor}}. "
          + "Rename the kind, change services.sd-webui-forge.flavor, or remove these models."
        ) unusedKinds;
      }
      {
        assertion = lib.all (kind: badNames cfg.models.${kind} == [ ]) (builtins.attrNames cfg.models);
        message = lib.concatStringsSep "\n" (
          lib.mapAttrsToList (
            kind: names:
            lib.concatMapStringsSep "\n" (
              n:
              ''services.sd-webui-forge.models.${kind}."${n}": a model file name must be a plain name (no "/", no leading "."), like "model.safetensors".''
            ) (badNames names)
          ) cfg.models
        );
      }
      {
        assertion = badNames cfg.extensions == [ ];
        message = lib.concatMapStringsSep "\n" (
          n:
          ''services.sd-webui-forge.extensions."${n}": an extension name is a directory name: no "/", no leading ".".''
        ) (badNames cfg.extensions);
      }
      {
        assertion = cfg.gpus == null || lib.unique cfg.gpus == cfg.gpus;
        message = "services.sd-webui-forge.gpus: ${builtins.toJSON cfg.gpus} lists a GPU more than once; list each index once.";
      }
      {
        assertion = !(cfg.environment ? CUDA_VISIBLE_DEVICES);
        message = "services.sd-webui-forge.environment.CUDA_VISIBLE_DEVICES: set services.sd-webui-forge.gpus instead, so the unit's device filter allows the same GPUs.";
      }
      {
        assertion = misplacedFlags == [ ];
        message = lib.concatMapStringsSep "\n" (
          a:
          "services.sd-webui-forge.extraArgs: \"${a}\" is set by the supervisor; use services.sd-webui-forge.${
            managedFlags.${flagName a}
          } instead."
        ) misplacedFlags;
      }
      {
        assertion = !hasInstances || cfg.front.enable;
        message = "services.sd-webui-forge.instances needs services.sd-webui-forge.front.enable: the front door is the one queue in front of the instances. Enable it, or remove the instances.";
      }
      {
        assertion = !hasInstances || cfg.front.uiPort == null;
        message = "services.sd-webui-forge.front.uiPort: with services.sd-webui-forge.instances each instance has its own private port (instances.<name>.port); leave front.uiPort null.";
      }
      {
        assertion = !hasInstances || cfg.gpus == null;
        message = "services.sd-webui-forge.gpus: with services.sd-webui-forge.instances each instance names its GPUs (instances.<name>.gpus); leave gpus null.";
      }
      {
        assertion = !hasInstances || cfg.queue.keep != true;
        message = "services.sd-webui-forge.queue.keep: the queue journal does not yet work with services.sd-webui-forge.instances; leave queue.keep null (off with instances) or set it to false.";
      }
      {
        assertion = badInstanceNames == [ ];
        message = lib.concatMapStringsSep "\n" (
          n:
          ''services.sd-webui-forge.instances."${n}": an instance name is letters, digits, "-" and "_", begins with a letter or digit, and is at most 32 characters long (it names a folder, a metric label and a cookie value).''
        ) badInstanceNames;
      }
      {
        assertion = sharedGpus == [ ];
        message = lib.concatMapStringsSep "\n" (
          p:
          if p.first == p.name then
            "services.sd-webui-forge.instances.${p.name}.gpus: GPU ${toString p.gpu} is listed twice; list each index once."
          else
            "services.sd-webui-forge.instances.${p.name}.gpus: GPU ${toString p.gpu} is already instance ${p.first}'s: one UI per GPU."
        ) sharedGpus;
      }
      {
        assertion = portClashes == [ ];
        message = lib.concatStringsSep "\n" portClashes;
      }
      {
        assertion = instanceCuda == [ ];
        message = lib.concatMapStringsSep "\n" (
          n:
          "services.sd-webui-forge.instances.${n}.environment.CUDA_VISIBLE_DEVICES: set services.sd-webui-forge.instances.${n}.gpus instead, so the unit's device filter allows the same GPUs."
        ) instanceCuda;
      }
      {
        assertion = instanceFlags == [ ];
        message = lib.concatMapStringsSep "\n" (
          f:
          "services.sd-webui-forge.instances.${f.n}.extraArgs: \"${f.a}\" is set by the supervisor; use services.sd-webui-forge.${
            if flagName f.a == "--port" then "instances.${f.n}.port" else managedFlags.${flagName f.a}
          } instead."
        ) instanceFlags;
      }
      {
        assertion = cfg.control.httpListen == null || cfg.control.tokenFile != null;
        message = "services.sd-webui-forge.control.httpListen needs services.sd-webui-forge.control.tokenFile: the TCP control API only accepts requests with a bearer token.";
      }
      {
        assertion = cfg.control.tokenFile == null || cfg.control.httpListen != null;
        message = "services.sd-webui-forge.control.tokenFile is only used with services.sd-webui-forge.control.httpListen; set that too, or remove the token file.";
      }
      {
        assertion = cfg.front.uiPort == null || cfg.front.uiPort != cfg.port;
        message = "services.sd-webui-forge.front.uiPort: ${toString cfg.front.uiPort} is services.sd-webui-forge.port, where the front door listens; the UI needs another port (or leave uiPort null to have one picked).";
      }
      {
        assertion = cfg.front.authFile == null || cfg.front.enable;
        message = "services.sd-webui-forge.front.authFile needs services.sd-webui-forge.front.enable: without the front door nothing checks the credentials, and the UI would be open. Enable the front door, or remove authFile (Forge/A1111 have apiAuthFile of their own).";
      }
      {
        assertion =
          cfg.front.authFile == null || !lib.hasPrefix builtins.storeDir (toString cfg.front.authFile);
        message = "services.sd-webui-forge.front.authFile: ${toString cfg.front.authFile} is in the Nix store, which every user can read; give the path of a file outside it as a string (e.g. \"/run/secrets/sd-webui-front-auth\" from agenix or sops-nix).";
      }
      {
        assertion =
          !builtins.elem cfg.dataDir [
            ""
            "/var"
            "/var/lib"
          ]
          && !lib.hasPrefix builtins.storeDir cfg.dataDir;
        message = "services.sd-webui-forge.dataDir: \"${cfg.dataDir}\" must be a writable directory of its own, e.g. /var/lib/sd-webui-forge.";
      }
    ];

    # The config file as a derivation: rendered with pkgs.formats.toml and,
    # when `check`, validated at build time with the supervisor's own checker,
    # so a bad config fails the build (`nixos-rebuild`, the image) with its
    # `FILE:LINE:COL: key.path: message` lines instead of failing the service
    # at start.
    file =
      {
        pkgs,
        supervisorPackage,
        value,
        check ? true,
      }:
      let
        rendered = (pkgs.formats.toml { }).generate "sd-webui-forge.toml" value;
      in
      if check then
        pkgs.runCommand "sd-webui-forge-config.toml"
          {
            preferLocalBuild = true;
            unchecked = rendered;
          }
          ''
            ${supervisorPackage}/bin/sd-webui-supervisor check-config --config "$unchecked"
            ln -s "$unchecked" "$out"
          ''
      else
        rendered;
  }
