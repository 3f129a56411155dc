# Evaluation tests for module.nix with nixpkgs' `lib` but without NixOS or a
# package set: the NixOS options the module sets are declared here by
# minimal stand-ins, and `pkgs` is a fake whose derivations are plain
# attribute sets (formats.toml renders with the pure ./toml.nix).
#
#   nix-instantiate --eval --strict --json tests/nix/eval-module.nix \
#     --argstr nixpkgsLib /path/to/nixpkgs/lib [--argstr supervisorOut DIR]
#
# Result: { results = [ { name; ok; detail; } ]; configs; builds; }.
# tests/nix/check.sh prints the results, writes each of `configs` to a file
# and runs `check-config` on it, and runs the module's own build-time check
# script (`builds`) with a real supervisor binary when one is built:
# supervisorOut is then a directory whose bin/sd-webui-supervisor is it.
{
  nixpkgsLib,
  supervisorOut ? "/nix/store/00000000000000000000000000000000-sd-webui-supervisor-0.1.0",
}:
let
  lib = import nixpkgsLib;
  inherit (lib) types mkOption;

  toTOML = import ./toml.nix;
  unitOf = import ../../nix/unit.nix;

  fakeDrv =
    name: extra:
    {
      type = "derivation";
      inherit name;
      outPath = "/nix/store/00000000000000000000000000000000-${name}";
    }
    // extra;

  fakeSupervisor = fakeDrv "sd-webui-supervisor-0.1.0" { outPath = supervisorOut; };
  fakeUi = fakeDrv "stand-in-ui" { meta.mainProgram = "stand-in-ui"; };
  fakeModel = fakeDrv "sd_xl_base_1.0.safetensors" { };

  fakePkgs = {
    formats.toml = _: {
      # As in nixpkgs' pkgs/pkgs-lib/formats.nix.
      type =
        let
          valueType =
            types.nullOr (
              types.oneOf [
                types.bool
                types.int
                types.float
                types.str
                types.path
                (types.attrsOf valueType)
                (types.listOf valueType)
              ]
            )
            // {
              description = "TOML value";
            };
        in
        valueType;
      generate =
        name: value:
        fakeDrv name {
          inherit value;
          text = toTOML value;
        };
    };
    runCommand = name: env: script: fakeDrv name { inherit env script; };
    writeText = name: text: fakeDrv name { inherit text; };
    sd-webui-supervisor = fakeSupervisor;
    git = fakeDrv "git-2.51.0" { };
  };

  # Minimal declarations of the NixOS options module.nix sets.
  standIns = {
    options = {
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      systemd.services = mkOption {
        type = types.attrsOf (types.attrsOf types.unspecified);
        default = { };
      };
      systemd.tmpfiles.rules = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      users.users = mkOption {
        type = types.attrsOf (types.attrsOf types.unspecified);
        default = { };
      };
      users.groups = mkOption {
        type = types.attrsOf (types.attrsOf types.unspecified);
        default = { };
      };
      environment.etc = mkOption {
        type = types.attrsOf (types.attrsOf types.unspecified);
        default = { };
      };
      services.dbus.packages = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      networking.firewall.allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
      };
      security.polkit.extraConfig = mkOption {
        type = types.lines;
        default = "";
      };
    };
  };

  base = {
    services.sd-webui-forge = {
      enable = true;
      package = fakeUi;
    };
  };

  eval =
    settings:
    lib.evalModules {
      modules = [
        standIns
        ../../module.nix
        { _module.args.pkgs = fakePkgs; }
        base
        { services.sd-webui-forge = settings; }
      ];
    };

  cfgOf = settings: (eval settings).config;
  # With further modules (systemd.services overrides, as an admin writes them).
  cfgWith =
    extra:
    (lib.evalModules {
      modules = [
        standIns
        ../../module.nix
        { _module.args.pkgs = fakePkgs; }
        base
      ]
      ++ extra;
    }).config;
  upgradeOf = extra: (cfgWith extra).services.sd-webui-forge.configFile.env.unchecked.value.supervisor;
  fingerprintOf = extra: (upgradeOf extra).unit_fingerprint;
  bumped = {
    services.sd-webui-forge.supervisorPackage = fakeDrv "sd-webui-supervisor-0.2.0" { };
  };
  optsOf = (eval { }).options.services.sd-webui-forge;
  sd = settings: (cfgOf settings).services.sd-webui-forge;
  unit = settings: (cfgOf settings).systemd.services.sd-webui-forge;
  sc = settings: (unit settings).serviceConfig;
  toml = settings: (sd settings).configFile.env.unchecked.value;
  failed =
    settings: map (a: a.message) (builtins.filter (a: !a.assertion) (cfgOf settings).assertions);
  # Does evaluating (deeply) throw?
  throws = v: !(builtins.tryEval (builtins.deepSeq v v)).success;
  mentions = needles: s: lib.all (n: lib.hasInfix n s) needles;

  check = name: ok: detail: {
    inherit name ok;
    detail = if ok then "" else builtins.toJSON detail;
  };
  eq =
    name: got: expected:
    check name (got == expected) { inherit got expected; };

  realistic = {
    flavor = "forge";
    gpus = [ 0 ];
    listen = true;
    openFirewall = true;
    extraArgs = "--cuda-malloc  --pin-shared-memory";
    environment.PYTORCH_CUDA_ALLOC_CONF = "expandable_segments:True";
    models.checkpoints."sd_xl_base_1.0.safetensors" = fakeModel;
    models.loras."add-detail.safetensors" = "/srv/models/add-detail.safetensors";
    extensions."sd-webui-localization-ja" = fakeDrv "sd-webui-localization-ja" { };
    settings = {
      sd_model_checkpoint = "sd_xl_base_1.0.safetensors";
      CLIP_stop_at_last_layers = 2;
    };
    restart = {
      policy = "when-idle";
      idleGrace = "30s";
      deadline = "2h";
    };
    apiAuthFile = "/run/secrets/forge-api-auth";
  };

  # Models downloaded at run time, two sharing one token file.
  withDownloads = {
    models.checkpoints."pony.safetensors" = {
      url = "https://civitai.com/api/download/models/290640?type=Model&format=SafeTensor";
      sha256 = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
      tokenFile = "/run/secrets/civitai-token";
    };
    models.loras."detail.safetensors" = {
      url = "https://civitai.com/api/download/models/1";
      sha256 = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
      tokenFile = "/run/secrets/civitai-token";
    };
    models.vae."sdxl_vae.safetensors" = {
      url = "https://huggingface.co/stabilityai/sdxl-vae/resolve/main/sdxl_vae.safetensors";
      sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    };
    models.embeddings."store.pt" = fakeModel;
    downloads.maxConcurrent = 3;
  };
  # The front door with every option set.
  withFront = {
    listen = true;
    openFirewall = true;
    front = {
      holdTimeout = "15m";
      maxHeld = 64;
      maxConnections = 512;
      authFile = "/run/secrets/sd-webui-front-auth";
      uiPort = 17860;
    };
  };
  tomlText = settings: (sd settings).configFile.env.unchecked.text;
  downloadCreds = builtins.filter (lib.hasPrefix "download-token-") (sc withDownloads).LoadCredential;
  withImages = realistic // {
    images.cat = {
      prompt = "a cat on a windowsill";
      seed = 1234;
      steps = 25;
      cfgScale = 6.5;
      width = 832;
      height = 1216;
      checkpoint = "sd_xl_base_1.0.safetensors";
      extra.scheduler = "Karras";
    };
    images.lighthouse.prompt = "a lighthouse";
  };
  blurWorkflow = {
    "1" = {
      class_type = "EmptyImage";
      inputs = {
        width = 64;
        height = 64;
        batch_size = 1;
        color = 0;
      };
    };
    "2" = {
      class_type = "SaveImage";
      inputs = {
        images = [
          "1"
          0
        ];
        filename_prefix = "declared";
      };
    };
  };
  comfyImages = {
    flavor = "comfyui";
    images.blur = {
      workflow = blurWorkflow;
      inputs."1.color" = 255;
    };
    images.fromFile.workflow = "/srv/workflows/upscale-api.json";
  };

  # Two instances behind the front door (docs/instances.md), every key of
  # one set.
  withInstances = {
    flavor = "comfyui";
    instances = {
      gpu0.gpus = [ 0 ];
      gpu1 = {
        gpus = [ 1 ];
        extraArgs = [ "--foo" ];
        environment.PYTORCH_CUDA_ALLOC_CONF = "expandable_segments:True";
        port = 17861;
      };
    };
  };
  instancesToml = {
    gpu0.gpus = [ 0 ];
    gpu1 = {
      gpus = [ 1 ];
      extra_args = [ "--foo" ];
      environment.PYTORCH_CUDA_ALLOC_CONF = "expandable_segments:True";
      port = 17861;
    };
  };
  withInstance =
    extra:
    lib.recursiveUpdate {
      flavor = "comfyui";
      instances.gpu0.gpus = [ 0 ];
    } extra;

  results = [
    # Self-upgrade (docs/upgrade.md): executable and unit_fingerprint.
    (eq "toml: supervisor.executable is the package's binary" (upgradeOf [ ]).executable
      "${supervisorOut}/bin/sd-webui-supervisor"
    )
    (eq "package bump: executable names the new binary" (upgradeOf [ bumped ]).executable
      "/nix/store/00000000000000000000000000000000-sd-webui-supervisor-0.2.0/bin/sd-webui-supervisor"
    )
    (eq "package bump: unit_fingerprint unchanged" (fingerprintOf [ bumped ]) (fingerprintOf [ ]))
    (check "hardening change: unit_fingerprint changes" (
      fingerprintOf [ { systemd.services.sd-webui-forge.serviceConfig.MemoryDenyWriteExecute = true; } ]
      != fingerprintOf [ ]
    ) "")
    (check "Environment= change: unit_fingerprint changes" (
      fingerprintOf [ { systemd.services.sd-webui-forge.environment.HF_HOME = "/srv/hf"; } ]
      != fingerprintOf [ ]
    ) "")
    (check "gpus change (DeviceAllow=): unit_fingerprint changes" (
      fingerprintOf [ { services.sd-webui-forge.gpus = [ 0 ]; } ]
      != fingerprintOf [ { services.sd-webui-forge.gpus = [ 1 ]; } ]
    ) "")
    (eq "config-only change: unit_fingerprint unchanged" (fingerprintOf [
      { services.sd-webui-forge.settings.CLIP_stop_at_last_layers = 2; }
    ]) (fingerprintOf [ ]))
    (eq "PATH (store paths of every nixpkgs bump) is left out" (fingerprintOf [
      { systemd.services.sd-webui-forge.environment.PATH = "/nix/store/1111-coreutils/bin"; }
    ]) (fingerprintOf [ ]))
    # Instances added or removed take effect at the supervisor's next start.
    (check "instances added or removed: unit_fingerprint changes" (
      let
        one = fingerprintOf [ { services.sd-webui-forge.instances.gpu0.gpus = [ 0 ]; } ];
        two = fingerprintOf [
          {
            services.sd-webui-forge.instances = {
              gpu0.gpus = [ 0 ];
              gpu1.gpus = [ 1 ];
            };
          }
        ];
      in
      one != fingerprintOf [ ] && two != one
    ) "")
    (eq "an instance's extraArgs change (it restarts alone): unit_fingerprint unchanged" (fingerprintOf [
      {
        services.sd-webui-forge.instances.gpu0 = {
          gpus = [ 0 ];
          extraArgs = [ "--foo" ];
        };
      }
    ]) (fingerprintOf [ { services.sd-webui-forge.instances.gpu0.gpus = [ 0 ]; } ]))
    (eq "RestartForceExitStatus=75 (the service-restart exit)" (sc { }).RestartForceExitStatus "75")
    # The front door is set up once, at start: its changes restart the service
    # once idle (the fingerprint), as a reload would only report them.
    (check "front.* change: unit_fingerprint changes" (
      fingerprintOf [ { services.sd-webui-forge.front.holdTimeout = "15m"; } ] != fingerprintOf [ ]
      && fingerprintOf [ { services.sd-webui-forge.front.maxHeld = 8; } ] != fingerprintOf [ ]
      && fingerprintOf [ { services.sd-webui-forge.front.uiPort = 17860; } ] != fingerprintOf [ ]
    ) "")
    (check "front.enable change: unit_fingerprint changes" (
      fingerprintOf [ { services.sd-webui-forge.front.enable = false; } ] != fingerprintOf [ ]
    ) "")
    (check "port or listen change behind the front door (its address): unit_fingerprint changes" (
      fingerprintOf [ { services.sd-webui-forge.port = 7861; } ] != fingerprintOf [ ]
      && fingerprintOf [ { services.sd-webui-forge.listen = true; } ] != fingerprintOf [ ]
    ) "")
    (eq "port change without the front door (a UI restart when idle): unit_fingerprint unchanged" (
      fingerprintOf [
        {
          services.sd-webui-forge.front.enable = false;
          services.sd-webui-forge.port = 7861;
        }
      ]
    ) (fingerprintOf [ { services.sd-webui-forge.front.enable = false; } ]))

    (check "download: token file loaded once with LoadCredential" (
      builtins.length downloadCreds == 1 && lib.hasSuffix ":/run/secrets/civitai-token" (builtins.head downloadCreds)
    ) (sc withDownloads).LoadCredential)
    (check "download: config points token_file at the credential" (
      mentions [
        ''"token_file" = "/run/credentials/sd-webui-forge.service/download-token-''
        ''"url" = "https://civitai.com/api/download/models/290640?type=Model&format=SafeTensor"''
        ''"max_concurrent" = 3''
      ] (tomlText withDownloads)
    ) (tomlText withDownloads))
    (check "download: the token path itself is not in the config" (
      !(lib.hasInfix "/run/secrets/civitai-token" (tomlText withDownloads))
    ) (tomlText withDownloads))
    (check "download: no token, no token_file" (
      !(lib.hasInfix "token_file" (tomlText { models = { inherit (withDownloads.models) vae; }; }))
    ) "")
    (check "download: a Nix path as tokenFile is refused (it would copy the secret to the store)" (
      throws (tomlText {
        models.vae."v.safetensors" = {
          url = "https://example.com/v";
          sha256 = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
          tokenFile = ./toml.nix;
        };
      })
    ) "")
    (check "download: store models still render as paths" (
      mentions [ ''"store.pt" = "/nix/store/'' ] (tomlText withDownloads)
    ) (tomlText withDownloads))
    # Option defaults, as the Forge packaging's users know them.
    (eq "default user" (sd { }).user "sd-webui-forge")
    (eq "default group" (sd { }).group "sd-webui-forge")
    (eq "default dataDir" (sd { }).dataDir "/var/lib/sd-webui-forge")
    (eq "default dataPermissions" (sd { }).dataPermissions "0700")
    (eq "default flavor" (sd { }).flavor "forge")
    (eq "default listen" (sd { }).listen false)
    (eq "default port (forge)" (sd { }).port 7860)
    (eq "default port (comfyui)" (sd { flavor = "comfyui"; }).port 8188)
    (eq "default extraArgs" (sd { }).extraArgs [ ])
    (eq "default gpus" (sd { }).gpus null)
    (eq "default restart" (sd { }).restart {
      policy = "when-idle";
      idleGrace = "10s";
      deadline = "6h";
      pollInterval = "2s";
    })
    (eq "default control" (sd { }).control {
      dbus = "system";
      maxConnections = 128;
      httpListen = null;
      tokenFile = null;
    })
    (eq "default front: on, every limit left to the supervisor" (sd { }).front {
      enable = true;
      holdTimeout = null;
      maxHeld = null;
      maxConnections = null;
      authFile = null;
      uiPort = null;
    })
    (eq "default gpu: the sleep inhibitor on, no idle unload" (sd { }).gpu {
      inhibitSleep = true;
      unloadAfter = null;
    })
    (eq "default openFirewall" (sd { }).openFirewall false)
    (eq "default command is the package's main program" (sd { }).command [
      "${fakeUi}/bin/stand-in-ui"
    ])
    (eq "command without meta.mainProgram: the flavor's usual launcher" (sd {
      package = lib.mkForce (fakeDrv "forge" { });
    }).command [ "/nix/store/00000000000000000000000000000000-forge/bin/stable-diffusion-webui" ])
    (eq "command without meta.mainProgram, comfyui" (sd {
      flavor = "comfyui";
      package = lib.mkForce (fakeDrv "comfy" { });
    }).command [ "/nix/store/00000000000000000000000000000000-comfy/bin/comfyui" ])
    (eq "every option has a description" (builtins.filter (o: (o.description or null) == null) (
      lib.collect lib.isOption optsOf
    )) [ ])

    # Types.
    (eq "extraArgs: a string is split on whitespace" (sd { extraArgs = " --cuda-malloc\t--pin-shared-memory  "; })
      .extraArgs
      [
        "--cuda-malloc"
        "--pin-shared-memory"
      ]
    )
    (eq "extraArgs: a list is kept" (sd { extraArgs = [ "--a" "b c" ]; }).extraArgs [ "--a" "b c" ])
    (check "extraArgs: a string with quotes is refused" (throws (sd { extraArgs = ''--x "a b"''; }).extraArgs) "")
    (check "port: a string is refused" (throws (sd { port = "7860"; }).port) "")
    (check "flavor: unknown is refused" (throws (sd { flavor = "invokeai"; }).flavor) "")
    (check "restart.idleGrace: not a duration is refused" (throws (sd { restart.idleGrace = "soon"; }).restart.idleGrace) "")
    (eq "restart.deadline: never is accepted" (sd { restart.deadline = "never"; }).restart.deadline "never")
    (check "dataPermissions: not octal is refused" (throws (sd { dataPermissions = "rwx"; }).dataPermissions) "")
    (check "models: a relative path is refused" (throws (sd { models.checkpoints."a.safetensors" = "a.safetensors"; }).models) "")
    (eq "models: a package becomes its store path" (sd realistic).models.checkpoints."sd_xl_base_1.0.safetensors" fakeModel.outPath)
    (eq "models: an absolute path is kept" (sd realistic).models.loras."add-detail.safetensors" "/srv/models/add-detail.safetensors")
    (eq "dataDir: a trailing slash is dropped" (sd { dataDir = "/srv/forge/"; }).dataDir "/srv/forge")
    (check "front.holdTimeout: not a duration is refused" (throws (sd { front.holdTimeout = "soon"; }).front.holdTimeout) "")
    (check "front.maxHeld: 0 and 65537 are refused" (
      throws (sd { front.maxHeld = 0; }).front.maxHeld && throws (sd { front.maxHeld = 65537; }).front.maxHeld
    ) "")
    (eq "front.maxHeld, front.maxConnections: 1 and 65536 are accepted" (
      let
        f = (sd {
          front.maxHeld = 1;
          front.maxConnections = 65536;
        }).front;
      in
      [
        f.maxHeld
        f.maxConnections
      ]
    ) [ 1 65536 ])
    (check "front.maxConnections: 0 is refused" (throws (sd { front.maxConnections = 0; }).front.maxConnections) "")
    (check "front.uiPort: 0 and 65536 are refused" (
      throws (sd { front.uiPort = 0; }).front.uiPort && throws (sd { front.uiPort = 65536; }).front.uiPort
    ) "")
    (check "instances.<name>.gpus: required, and not empty" (
      throws (toml { instances.gpu0 = { }; }) && throws (toml { instances.gpu0.gpus = [ ]; })
    ) "")
    (check "instances.<name>.gpus: a negative index is refused" (throws (toml { instances.gpu0.gpus = [ (-1) ]; })) "")
    (check "instances.<name>.port: 0 and 65536 are refused" (
      throws (toml (withInstance { instances.gpu0.port = 0; }))
      && throws (toml (withInstance { instances.gpu0.port = 65536; }))
    ) "")
    (eq "instances.<name>: defaults" (sd (withInstance { })).instances.gpu0 {
      gpus = [ 0 ];
      extraArgs = [ ];
      environment = { };
      port = null;
    })
    (check "front.authFile: a relative path is refused" (throws (sd { front.authFile = "secrets/auth"; }).front.authFile) "")

    # The generated TOML (docs/design.md#the-config-file).
    (eq "toml: ui" (toml realistic).ui {
      flavor = "forge";
      command = [ "${fakeUi}/bin/stand-in-ui" ];
      listen = true;
      port = 7860;
      extra_args = [
        "--cuda-malloc"
        "--pin-shared-memory"
      ];
      environment = {
        PYTHONUNBUFFERED = "1";
        PYTORCH_CUDA_ALLOC_CONF = "expandable_segments:True";
      };
      gpus = [ 0 ];
      api_auth_file = "/run/credentials/sd-webui-forge.service/api-auth";
      startup_timeout = "15m";
      stop_timeout = "30s";
    })
    (eq "toml: data" (toml realistic).data {
      dir = "/var/lib/sd-webui-forge";
      permissions = "0700";
    })
    (eq "toml: models" (toml realistic).models {
      checkpoints."sd_xl_base_1.0.safetensors" = fakeModel.outPath;
      loras."add-detail.safetensors" = "/srv/models/add-detail.safetensors";
    })
    (eq "toml: extensions" (toml realistic).extensions {
      "sd-webui-localization-ja" = "/nix/store/00000000000000000000000000000000-sd-webui-localization-ja";
    })
    (eq "toml: settings" (toml realistic).settings realistic.settings)
    (eq "toml: restart" (toml realistic).restart {
      policy = "when-idle";
      idle_grace = "30s";
      deadline = "2h";
      poll_interval = "2s";
    })
    (eq "toml: control" (toml realistic).control {
      socket = "/run/sd-webui-forge/control.sock";
      dbus = "system";
      max_connections = 128;
    })
    (eq "toml: optional sections and keys are left out" (
      let
        t = toml { };
      in
      {
        sections = builtins.attrNames t;
        ui = builtins.filter (k: k == "gpus" || k == "api_auth_file") (builtins.attrNames t.ui);
      }
    ) {
      sections = [
        "control"
        "data"
        "restart"
        "supervisor"
        "ui"
      ];
      ui = [ ];
    })
    (eq "toml: control.http_listen with its token credential" (toml {
      control.httpListen = "127.0.0.1:7870";
      control.tokenFile = "/run/secrets/token";
    }).control
      {
        socket = "/run/sd-webui-forge/control.sock";
        dbus = "system";
        http_listen = "127.0.0.1:7870";
        token_file = "/run/credentials/sd-webui-forge.service/control-token";
        max_connections = 128;
      }
    )
    # [gpu]: only what differs from the supervisor's defaults.
    (eq "toml: a default config has no [gpu] (inhibit_sleep defaults to true)" ((toml { }) ? gpu) false)
    (eq "toml: gpu.inhibitSleep = false is written" (toml { gpu.inhibitSleep = false; }).gpu {
      inhibit_sleep = false;
    })
    (check "gpu.inhibitSleep: not a bool is refused" (throws (sd { gpu.inhibitSleep = "yes"; }).gpu.inhibitSleep) "")
    # A reload applies it: no restart of the service.
    (eq "gpu.inhibitSleep change: unit_fingerprint unchanged" (fingerprintOf [
      { services.sd-webui-forge.gpu.inhibitSleep = false; }
    ]) (fingerprintOf [ ]))
    (check "polkit: the service's user may take a sleep block lock" (
      mentions [
        ''"org.freedesktop.login1.inhibit-block-sleep"''
        ''subject.user == "sd-webui-forge"''
        "polkit.Result.YES"
      ] (cfgOf { }).security.polkit.extraConfig
    ) (cfgOf { }).security.polkit.extraConfig)
    (check "polkit: the rule names a custom user" (
      mentions [ ''subject.user == "painter"'' ] (cfgOf { user = "painter"; }).security.polkit.extraConfig
    ) (cfgOf { user = "painter"; }).security.polkit.extraConfig)
    (eq "polkit: no rule with gpu.inhibitSleep = false" (cfgOf { gpu.inhibitSleep = false; })
      .security.polkit.extraConfig
      ""
    )
    # [front]: only what is set, the rest left to the supervisor's defaults.
    (eq "toml: a default config has no [front] (the supervisor's defaults: on, 5m, 1024, 4096)" (
      (toml { }) ? front
    ) false)
    (eq "toml: front.enable = true as set explicitly renders nothing either" ((toml { front.enable = true; }) ? front) false)
    (eq "toml: a default config has no [health]" ((toml { }) ? health) false)
    # [kubernetes]: written only when on.
    (eq "default kubernetes: no pod deletion cost" (sd { }).kubernetes { podDeletionCost = false; })
    (eq "toml: a default config has no [kubernetes]" ((toml { }) ? kubernetes) false)
    (eq "toml: kubernetes.podDeletionCost = true is written" (toml { kubernetes.podDeletionCost = true; })
      .kubernetes
      { pod_deletion_cost = true; }
    )
    (check "kubernetes.podDeletionCost: not a bool is refused" (throws (sd { kubernetes.podDeletionCost = "yes"; })
      .kubernetes.podDeletionCost
    ) "")
    (eq "toml: gpu.unloadAfter is written" (toml { gpu.unloadAfter = "30m"; }).gpu { unload_after = "30m"; })
    (eq "toml: health, every option set" (toml {
      health = {
        stallTimeout = "off";
        stallGrace = "2m";
        gpuErrors = false;
      };
    }).health {
      stall_timeout = "off";
      stall_grace = "2m";
      gpu_errors = false;
    })
    (check "health.stallTimeout: not a duration is refused" (throws (sd { health.stallTimeout = "soon"; }).health.stallTimeout) "")
    (eq "toml: a default config has no [queue]" ((toml { }) ? queue) false)
    (eq "toml: queue, every option set" (toml { queue = { keep = false; history = 1000; }; }).queue {
      keep = false;
      history = 1000;
    })
    (check "queue.history: 0 is refused" (throws (sd { queue.history = 0; }).queue.history) "")
    (eq "toml: front, every option set; authFile as its credential" (toml withFront).front {
      hold_timeout = "15m";
      max_held = 64;
      max_connections = 512;
      auth_file = "/run/credentials/sd-webui-forge.service/front-auth";
      ui_port = 17860;
    })
    (eq "toml: front.enable = false is written, nothing else" (toml { front.enable = false; }).front {
      enable = false;
    })
    (eq "toml: [ui] port and listen stay as set behind the front door" (
      let
        t = toml withFront;
      in
      {
        inherit (t.ui) port listen;
      }
    ) {
      port = 7860;
      listen = true;
    })
    (check "toml: front.authFile's own path is not in the config (only the credential's)" (
      !(lib.hasInfix "/run/secrets/sd-webui-front-auth" (tomlText withFront))
      && mentions [ ''["front"]'' ''"auth_file" = "/run/credentials/sd-webui-forge.service/front-auth"'' ] (
        tomlText withFront
      )
    ) (tomlText withFront))
    # [instances.<name>]: one table each, gpus / extra_args / environment /
    # port, the empty and null ones left out.
    (eq "toml: instances, camelCase options become the config's keys" (toml withInstances).instances
      instancesToml
    )
    (eq "toml: the written text holds both [instances.<name>] tables" (builtins.fromTOML (tomlText withInstances))
      .instances
      instancesToml
    )
    (eq "toml: no instances, no [instances]" ((toml { }) ? instances) false)
    (eq "toml: instances leave ui.gpus, front.ui_port and queue.keep out" (
      let
        t = toml withInstances;
      in
      {
        gpus = t.ui ? gpus;
        front = t ? front;
        queue = t ? queue;
      }
    ) {
      gpus = false;
      front = false;
      queue = false;
    })
    (eq "toml stand-in: the written text reads back as the same value" (builtins.fromTOML
      (sd realistic).configFile.env.unchecked.text
    ) (toml realistic))

    # Declared images.
    (eq "toml: images (forge), camelCase options become the config's keys" (toml withImages).images {
      cat = {
        prompt = "a cat on a windowsill";
        seed = 1234;
        steps = 25;
        cfg_scale = 6.5;
        width = 832;
        height = 1216;
        checkpoint = "sd_xl_base_1.0.safetensors";
        extra.scheduler = "Karras";
      };
      lighthouse.prompt = "a lighthouse";
    })
    (eq "toml: no images, no [images]" ((toml { }) ? images) false)
    (eq "toml: comfyui images: an inline workflow is written to the store as JSON" (toml comfyImages).images {
      blur = {
        workflow = "/nix/store/00000000000000000000000000000000-sd-webui-image-blur-workflow.json";
        inputs."1.color" = 255;
      };
      fromFile.workflow = "/srv/workflows/upscale-api.json";
    })
    (eq "outputDir is under dataDir" (sd { dataDir = "/srv/forge"; }).outputDir "/srv/forge/outputs/declared")
    (eq "imageFiles: one PNG per declared image" (sd withImages).imageFiles {
      cat = "/var/lib/sd-webui-forge/outputs/declared/cat.png";
      lighthouse = "/var/lib/sd-webui-forge/outputs/declared/lighthouse.png";
    })
    (check "outputDir is read-only" (throws (sd { outputDir = "/tmp"; }).outputDir) "")
    (eq "no assertion fails for declared images" (failed withImages ++ failed comfyImages) [ ])
    (check "assertion: image names become file names" (
      lib.any (mentions [ ''images."../x"'' "<name>.png" ]) (failed { images."../x".prompt = "x"; })
    ) (failed { images."../x".prompt = "x"; }))
    (check "assertion: a comfyui image is a workflow, a forge image a prompt" (
      let
        f = failed {
          flavor = "comfyui";
          images.cat.prompt = "a cat";
        };
        g = failed { images.blur.workflow = blurWorkflow; };
      in
      lib.any (mentions [ "images.cat" "comfyui image is a workflow" ]) f
      && lib.any (mentions [ "images.blur" "needs a prompt" ]) g
    ) "")

    # Build-time validation and installation.
    (check "configFile runs check-config on the rendered file" (mentions [
      "${supervisorOut}/bin/sd-webui-supervisor check-config --config \"$unchecked\""
      "ln -s \"$unchecked\" \"$out\""
    ] (sd { }).configFile.script) (sd { }).configFile.script)
    (eq "configFile is /etc/sd-webui-forge/config.toml" (cfgOf { })
      .environment.etc."sd-webui-forge/config.toml".source
      (sd { }).configFile
    )
    (eq "checkConfig = false installs the rendered file as it is" (sd { checkConfig = false; })
      .configFile.name
      "sd-webui-forge.toml"
    )

    # The unit: nix/unit.nix with the module's values.
    (eq "unit is nix/unit.nix of the options" (unit realistic) (unitOf {
      supervisorBin = "${supervisorOut}/bin/sd-webui-supervisor";
      inherit (sd realistic) configFile;
      configPath = "/etc/sd-webui-forge/config.toml";
      credentials.api-auth = "/run/secrets/forge-api-auth";
      user = "sd-webui-forge";
      group = "sd-webui-forge";
      dataDir = "/var/lib/sd-webui-forge";
      dataPermissions = "0700";
      gpus = [ 0 ];
      startupTimeout = "15m";
      stopTimeout = "30s";
      path = [ fakePkgs.git ];
    }))
    (eq "unit: Type" (sc { }).Type "notify-reload")
    (eq "unit: ReloadSignal" (sc { }).ReloadSignal "SIGHUP")
    (eq "unit: ExecStart" (sc { }).ExecStart
      "${supervisorOut}/bin/sd-webui-supervisor run --config /etc/sd-webui-forge/config.toml"
    )
    (eq "unit: reloadIfChanged" (unit { }).reloadIfChanged true)
    (eq "unit: the config file is the unit's trigger" (unit { }).restartTriggers [ (sd { }).configFile ])
    (eq "unit: KillMode" (sc { }).KillMode "mixed")
    (eq "unit: Restart" (sc { }).Restart "on-failure")
    (eq "unit: StateDirectory for the default dataDir" ((sc { }).StateDirectory or null) "sd-webui-forge")
    (eq "unit: StateDirectoryMode follows dataPermissions" (sc { dataPermissions = "0750"; })
      .StateDirectoryMode
      "0750"
    )
    (eq "unit: UMask follows dataPermissions" (sc { dataPermissions = "0750"; }).UMask "0027")
    (eq "unit: RuntimeDirectory for the control socket" (sc { }).RuntimeDirectory "sd-webui-forge")
    (eq "unit: no MemoryDenyWriteExecute (PyTorch JIT)" ((sc { }) ? MemoryDenyWriteExecute) false)
    (eq "unit: DeviceAllow for gpus = [ 0 2 ]" (sc { gpus = [ 0 2 ]; }).DeviceAllow [
      "/dev/nvidiactl rw"
      "/dev/nvidia-uvm rw"
      "/dev/nvidia-uvm-tools rw"
      "/dev/nvidia-modeset rw"
      "/dev/nvidia0 rw"
      "/dev/nvidia2 rw"
    ])
    (check "unit: DeviceAllow for every GPU when gpus = null" (builtins.elem "char-nvidia-frontend rw" (sc { })
      .DeviceAllow
    ) (sc { }).DeviceAllow)
    (eq "unit: DeviceAllow with instances: the GPUs of all of them" (sc {
      instances = {
        b.gpus = [ 3 ];
        a.gpus = [
          2
          0
        ];
      };
    }).DeviceAllow [
      "/dev/nvidiactl rw"
      "/dev/nvidia-uvm rw"
      "/dev/nvidia-uvm-tools rw"
      "/dev/nvidia-modeset rw"
      "/dev/nvidia0 rw"
      "/dev/nvidia2 rw"
      "/dev/nvidia3 rw"
    ])
    (eq "unit: Forge and A1111 get git on PATH (GitPython at start), ComfyUI none" (map
      (flavor: map (p: p.name) (unit { inherit flavor; }).path)
      [
        "forge"
        "a1111"
        "comfyui"
      ]
    ) [ [ "git-2.51.0" ] [ "git-2.51.0" ] [ ] ])
    (eq "unit: LoadCredential for front.authFile" (sc withFront).LoadCredential [
      "front-auth:/run/secrets/sd-webui-front-auth"
    ])
    (eq "unit: LoadCredential for every secret at once" (sc (
      realistic
      // {
        inherit (withFront) front;
        control.httpListen = "127.0.0.1:7870";
        control.tokenFile = "/run/secrets/control-token";
      }
    )).LoadCredential [
      "api-auth:/run/secrets/forge-api-auth"
      "control-token:/run/secrets/control-token"
      "front-auth:/run/secrets/sd-webui-front-auth"
    ])
    (eq "unit: the front door can bind ui.port and the UI a loopback port (IPv4 and IPv6, no bind or address filter)" (
      let
        s = sc withFront;
      in
      {
        inet = builtins.filter (f: f == "AF_INET" || f == "AF_INET6") s.RestrictAddressFamilies;
        filters = builtins.filter (k: builtins.hasAttr k s) [
          "SocketBindAllow"
          "SocketBindDeny"
          "IPAddressDeny"
          "IPAddressAllow"
          "PrivateNetwork"
        ];
      }
    ) {
      inet = [
        "AF_INET"
        "AF_INET6"
      ];
      filters = [ ];
    })
    (eq "unit: LoadCredential for apiAuthFile" (sc realistic).LoadCredential [
      "api-auth:/run/secrets/forge-api-auth"
    ])
    (eq "custom dataDir: tmpfiles, ReadWritePaths, no StateDirectory" (
      let
        c = cfgOf { dataDir = "/srv/forge"; };
        s = c.systemd.services.sd-webui-forge.serviceConfig;
      in
      {
        rules = c.systemd.tmpfiles.rules;
        rw = s.ReadWritePaths;
        state = s ? StateDirectory;
      }
    ) {
      rules = [ "d '/srv/forge' 0700 sd-webui-forge sd-webui-forge - -" ];
      rw = [ "/srv/forge" ];
      state = false;
    })
    (eq "dataDir under /home: ProtectHome=tmpfs and BindPaths" (
      let
        s = sc { dataDir = "/home/ai/forge"; };
      in
      {
        inherit (s) ProtectHome BindPaths;
      }
    ) {
      ProtectHome = "tmpfs";
      BindPaths = [ "/home/ai/forge" ];
    })

    # Users, D-Bus, firewall.
    (eq "default user and group are created" (
      let
        c = cfgOf { };
      in
      {
        user = c.users.users.sd-webui-forge.isSystemUser;
        group = c.users.groups ? sd-webui-forge;
      }
    ) {
      user = true;
      group = true;
    })
    (eq "a custom user is not created" (cfgOf {
      user = "alice";
      group = "users";
    }).users
      {
        users = { };
        groups = { };
      }
    )
    (eq "D-Bus policy from the supervisor package" (cfgOf { }).services.dbus.packages [ fakeSupervisor ])
    (check "D-Bus policy adapted for a custom user and group" (
      let
        p = builtins.head (cfgOf {
          user = "alice";
          group = "render";
        }).services.dbus.packages;
      in
      mentions [
        ''s/user="sd-webui-forge"/user="alice"/g''
        ''s/group="sd-webui-forge"/group="render"/g''
        "${supervisorOut}/share/dbus-1/system.d/io.github.sd_webui_supervisor.Supervisor1.conf"
      ] p.script
    ) "")
    (eq "control.dbus = off: no D-Bus policy" (cfgOf { control.dbus = "off"; }).services.dbus.packages [ ])
    (eq "openFirewall opens the port" (cfgOf realistic).networking.firewall.allowedTCPPorts [ 7860 ])
    (eq "firewall closed by default" (cfgOf { }).networking.firewall.allowedTCPPorts [ ])
    (eq "openFirewall behind the front door opens ui.port, never the UI's private port" (cfgOf withFront)
      .networking.firewall.allowedTCPPorts
      [ 7860 ]
    )
    (check "warning: openFirewall without listen" (
      builtins.length (cfgOf { openFirewall = true; }).warnings == 1
    ) (cfgOf { openFirewall = true; }).warnings)

    # Assertions, each with its remedy.
    (eq "no assertion fails for a realistic config" (failed realistic) [ ])
    (check "assertion: model kind not used by the flavor" (
      let
        f = failed { models.diffusion_models."flux1-dev.safetensors" = "/srv/flux1-dev.safetensors"; };
      in
      builtins.length f == 1
      && mentions [
        "models.diffusion_models"
        ''flavor "forge" does not use model kind "diffusion_models"''
        "comfyui"
        "services.sd-webui-forge.flavor"
      ] (builtins.head f)
    ) (failed { models.diffusion_models."flux1-dev.safetensors" = "/srv/flux1-dev.safetensors"; }))
    (eq "assertion: the same kind is fine for comfyui" (failed {
      flavor = "comfyui";
      models.diffusion_models."flux1-dev.safetensors" = "/srv/flux1-dev.safetensors";
    }) [ ])
    (check "assertion: an unknown model kind" (
      lib.any (mentions [ ''"checkpoint"'' "no flavor uses it" ]) (failed {
        models.checkpoint."a.safetensors" = "/srv/a.safetensors";
      })
    ) (failed { models.checkpoint."a.safetensors" = "/srv/a.safetensors"; }))
    (check "assertion: model file names must be plain" (
      let
        f = failed {
          models.checkpoints."../escape.safetensors" = "/srv/a";
          models.checkpoints.".hidden.safetensors" = "/srv/b";
        };
      in
      mentions [ "../escape.safetensors" ".hidden.safetensors" "plain name" ] (lib.concatStrings f)
    ) "")
    (check "assertion: extension names must be plain" (
      lib.any (mentions [ "extensions" "a/b" ]) (failed { extensions."a/b" = "/srv/ext"; })
    ) "")
    (check "assertion: gpus unique" (
      lib.any (mentions [ "gpus" "more than once" ]) (failed { gpus = [ 0 0 ]; })
    ) (failed { gpus = [ 0 0 ]; }))
    (check "assertion: CUDA_VISIBLE_DEVICES points to gpus" (
      lib.any (mentions [ "CUDA_VISIBLE_DEVICES" "gpus" ]) (failed { environment.CUDA_VISIBLE_DEVICES = "1"; })
    ) "")
    (check "assertion: http listener needs a token file" (
      lib.any (mentions [ "httpListen" "tokenFile" ]) (failed { control.httpListen = "127.0.0.1:7870"; })
    ) "")
    (check "assertion: flags the supervisor sets are refused in extraArgs" (
      let
        f = failed {
          extraArgs = [
            "--port"
            "9000"
            "--listen"
          ];
        };
      in
      mentions [ ''"--port"'' "services.sd-webui-forge.port" ''"--listen"'' "services.sd-webui-forge.listen" ] (
        lib.concatStrings f
      )
    ) "")
    (eq "no assertion fails with every front option set" (failed withFront) [ ])
    (check "assertion: front.uiPort is not port" (
      lib.any (mentions [ "front.uiPort" "7860" "services.sd-webui-forge.port" ]) (failed { front.uiPort = 7860; })
    ) (failed { front.uiPort = 7860; }))
    (check "assertion: front.authFile needs the front door" (
      lib.any (mentions [ "front.authFile" "front.enable" ]) (failed {
        front.enable = false;
        front.authFile = "/run/secrets/auth";
      })
    ) "")
    (check "assertion: front.authFile in the Nix store is refused" (
      lib.any (mentions [ "front.authFile" "Nix store" ]) (failed {
        front.authFile = "/nix/store/00000000000000000000000000000000-source/front-auth";
      })
    ) "")
    (eq "no assertion fails with two instances (queue.keep = false too)" (
      failed withInstances ++ failed (withInstances // { queue.keep = false; })
    ) [ ])
    (check "assertion: instances refuse gpus, front.uiPort, front.enable = false and queue.keep = true" (
      lib.any (mentions [ "services.sd-webui-forge.gpus" "instances.<name>.gpus" ]) (failed (withInstance { gpus = [ 0 ]; }))
      && lib.any (mentions [ "front.uiPort" "instances.<name>.port" ]) (failed (withInstance { front.uiPort = 17860; }))
      && lib.any (mentions [ "instances needs" "front.enable" ]) (failed (withInstance { front.enable = false; }))
      && lib.any (mentions [ "queue.keep" "instances" ]) (failed (withInstance { queue.keep = true; }))
    ) "")
    (check "assertion: a GPU belongs to one instance" (
      let
        f = failed {
          instances = {
            a.gpus = [ 0 ];
            b.gpus = [
              1
              0
              1
            ];
          };
        };
      in
      builtins.length f == 1
      && mentions [
        "instances.b.gpus: GPU 0 is already instance a's"
        "instances.b.gpus: GPU 1 is listed twice"
      ] (builtins.head f)
    ) (failed {
      instances = {
        a.gpus = [ 0 ];
        b.gpus = [
          1
          0
          1
        ];
      };
    }))
    (check "assertion: instance names" (
      lib.any (mentions [ ''instances."a b"'' "instance name" ]) (failed { instances."a b".gpus = [ 0 ]; })
      && lib.any (mentions [ ''instances."-a"'' ]) (failed { instances."-a".gpus = [ 0 ]; })
      && failed { instances.${lib.fixedWidthString 32 "a" ""}.gpus = [ 0 ]; } == [ ]
      && lib.any (mentions [ "at most 32" ]) (failed { instances.${lib.fixedWidthString 33 "a" ""}.gpus = [ 0 ]; })
    ) "")
    (check "assertion: instance ports: not port, not another instance's" (
      lib.any (mentions [ "instances.gpu0.port" "8188" "services.sd-webui-forge.port" ]) (
        failed (withInstance { instances.gpu0.port = 8188; })
      )
      && lib.any (mentions [ "instances.b.port" "17861" "instance a's port" ]) (failed {
        instances = {
          a = {
            gpus = [ 0 ];
            port = 17861;
          };
          b = {
            gpus = [ 1 ];
            port = 17861;
          };
        };
      })
    ) "")
    (check "assertion: an instance's CUDA_VISIBLE_DEVICES points to its gpus" (
      lib.any (mentions [ "instances.gpu0.environment.CUDA_VISIBLE_DEVICES" "instances.gpu0.gpus" ]) (
        failed (withInstance { instances.gpu0.environment.CUDA_VISIBLE_DEVICES = "1"; })
      )
    ) "")
    (check "assertion: flags the supervisor sets are refused in an instance's extraArgs" (
      mentions [ ''instances.gpu0.extraArgs: "--port"'' "services.sd-webui-forge.instances.gpu0.port" ''"--listen"'' ] (
        lib.concatStrings (failed (withInstance { instances.gpu0.extraArgs = [ "--port" "9000" "--listen" ]; }))
      )
    ) "")
    (check "assertion: dataDir must be a directory of its own" (
      lib.any (mentions [ "dataDir" ]) (failed { dataDir = "/var/lib"; })
    ) "")
  ];

  # Configs for check-config (tests/nix/check.sh writes each to a file).
  configs = {
    control = (sd {
      control = {
        httpListen = "127.0.0.1:7870";
        tokenFile = "/run/secrets/control-token";
        dbus = "off";
      };
      restart = {
        deadline = "never";
        policy = "manual";
      };
      dataDir = "/srv/forge";
      dataPermissions = "0750";
    }).configFile.env.unchecked.text;
    default = (sd { }).configFile.env.unchecked.text;
    gpu-off = (sd { gpu.inhibitSleep = false; }).configFile.env.unchecked.text;
    kubernetes-on = (sd { kubernetes.podDeletionCost = true; }).configFile.env.unchecked.text;
    instances = tomlText withInstances;
    instances-forge = tomlText (
      realistic
      // {
        gpus = null;
        instances = {
          gpu0.gpus = [ 0 ];
          gpu1 = {
            gpus = [ 1 ];
            port = 17862;
          };
        };
        queue.keep = false;
      }
    );
    front = (sd withFront).configFile.env.unchecked.text;
    front-off = (sd {
      front.enable = false;
      port = 7861;
    }).configFile.env.unchecked.text;
    downloads = (sd withDownloads).configFile.env.unchecked.text;
    realistic = (sd realistic).configFile.env.unchecked.text;
    images = (sd withImages).configFile.env.unchecked.text;
    comfyui = (sd {
      flavor = "comfyui";
      models.diffusion_models."flux1-dev.safetensors" = "/srv/flux1-dev.safetensors";
      models.clip_vision."clip_vision_g.safetensors" = "/srv/clip_vision_g.safetensors";
      gpus = [
        0
        1
      ];
    }).configFile.env.unchecked.text;
  };

  # The module's build-time check, to run as the build would, with a config
  # that passes the module's own checks and ones that only check-config can
  # reject (idle_grace longer than deadline, a hold timeout above 24h).
  badRestart = {
    restart.idleGrace = "3h";
    restart.deadline = "1h";
  };
  badFront.front.holdTimeout = "25h";
  # 17 instances: the module has no limit of its own, check-config's is 16.
  tooManyInstances.instances = lib.genAttrs (map (i: "gpu${toString i}") (lib.range 0 16)) (n: {
    gpus = [ (lib.toInt (lib.removePrefix "gpu" n)) ];
  });
  builds = {
    bad-instances = {
      inherit ((sd tooManyInstances).configFile) script;
      config = tomlText tooManyInstances;
      expect = "instances: declares 17 instances; at most 16";
    };
    bad-front = {
      inherit ((sd badFront).configFile) script;
      config = (sd badFront).configFile.env.unchecked.text;
      expect = "front.hold_timeout";
    };
    good = {
      inherit ((sd realistic).configFile) script;
      config = configs.realistic;
      expect = "ok";
    };
    bad = {
      inherit ((sd badRestart).configFile) script;
      config = (sd badRestart).configFile.env.unchecked.text;
      expect = "restart.";
    };
  };
  # Assertion messages as a user sees them, printed by check.sh.
  messages =
    failed { models.diffusion_models."flux1-dev.safetensors" = "/srv/flux1-dev.safetensors"; }
    ++ failed { models.checkpoints."../escape.safetensors" = "/srv/a"; }
    ++ failed { extraArgs = "--port 9000"; }
    ++ failed {
      front.enable = false;
      front.authFile = "/run/secrets/auth";
    }
    ++ failed {
      gpus = [ 0 ];
      instances = {
        a.gpus = [ 0 ];
        b.gpus = [ 0 ];
      };
    };
in
{
  inherit
    results
    configs
    builds
    messages
    ;
}
