{
  description = "sd-webui-supervisor: Stable Diffusion web UIs (Forge, AUTOMATIC1111, ComfyUI) as systemd services that reload instead of restarting";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      modelName = import ./nix/model-name.nix;
    in
    {
      overlays.default = final: _prev: {
        sd-webui-supervisor = final.callPackage ./nix/package.nix { };
        sd-webui-stand-in-ui = final.callPackage ./nix/stand-in-ui.nix { };
        # sd-webui-image { settings = { <services.sd-webui-forge options> }; }:
        # a container image, see nix/image.nix and docs/containers.md.
        sd-webui-image = final.callPackage ./nix/image.nix { inherit (final) sd-webui-supervisor; };
        # pkgs.fetchurl with the store name of lib.fetchModel; takes
        # fetchurl's other arguments too, e.g. for a download that needs a
        # token: curlOptsList, or netrcPhase with netrcImpureEnvVars.
        fetchModel =
          {
            url,
            hash,
            name ? null,
            ...
          }@args:
          final.fetchurl (
            removeAttrs args [ "name" ]
            // {
              name = modelName { inherit url name; };
              inherit url hash;
            }
          );
      };

      packages = forAllSystems (
        pkgs:
        let
          # The overlay's packages, each seeing the others (the image needs
          # the supervisor).
          own = self.overlays.default (pkgs // own) pkgs;
        in
        {
          default = own.sd-webui-supervisor;
          inherit (own) sd-webui-supervisor;
          stand-in-ui = own.sd-webui-stand-in-ui;

          # The image to try without a GPU: the stand-in UI answers the
          # Forge API. The control API's token is mounted at run time.
          image-stand-in = own.sd-webui-image {
            name = "sd-webui-stand-in";
            settings = {
              package = own.sd-webui-stand-in-ui;
              listen = true;
              environment.STANDIN_JOB_SECONDS = "20";
              stopTimeout = "20s";
              control.httpListen = "0.0.0.0:7870";
              control.tokenFile = "/run/secrets/sd-webui-forge/control-token";
            };
          };
        }
        // lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "x86_64-linux") {
          # ComfyUI from nixpkgs with CUDA (unfree), for NVIDIA GPUs.
          image =
            let
              cuda = import nixpkgs {
                inherit (pkgs.stdenv.hostPlatform) system;
                config = {
                  allowUnfree = true;
                  cudaSupport = true;
                };
              };
            in
            own.sd-webui-image {
              name = "sd-webui-comfyui";
              settings = {
                flavor = "comfyui";
                package = cuda.comfyui;
                listen = true;
                control.httpListen = "0.0.0.0:7870";
                control.tokenFile = "/run/secrets/sd-webui-forge/control-token";
              };
            };
        }
      );

      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./module.nix ];
          services.sd-webui-forge.supervisorPackage =
            lib.mkDefault
              self.packages.${pkgs.stdenv.hostPlatform.system}.sd-webui-supervisor;
        };

      lib = {
        # fetchModel { url, hash, name ? null }: see nix/fetch-model.nix.
        fetchModel = import ./nix/fetch-model.nix;
        # modelName { url, name ? null }: the store name fetchModel uses.
        inherit modelName;
      };

      checks = forAllSystems (
        pkgs:
        let
          inherit (pkgs.stdenv.hostPlatform) system;
          # The module's config file alone, without building a whole system.
          configFileOf =
            settings:
            (lib.nixosSystem {
              modules = [
                self.nixosModules.default
                {
                  nixpkgs.hostPlatform = system;
                  services.sd-webui-forge = {
                    enable = true;
                    package = self.packages.${system}.stand-in-ui;
                  }
                  // settings;
                }
              ];
            }).config.services.sd-webui-forge.configFile;
        in
        {
          inherit (self.packages.${system}) sd-webui-supervisor stand-in-ui;

          # A config that passes the module's checks passes check-config.
          config-accepted = configFileOf {
            models.checkpoints."a.safetensors" = pkgs.writeText "a.safetensors" "stand-in";
            settings.CLIP_stop_at_last_layers = 2;
            gpus = [ 0 ];
          };

          # One that only the supervisor can reject (idle_grace longer than
          # deadline) fails the build, with check-config's message.
          config-rejected =
            pkgs.runCommand "config-rejected"
              {
                failed = pkgs.testers.testBuildFailure (configFileOf {
                  restart.idleGrace = "3h";
                  restart.deadline = "1h";
                });
              }
              ''
                grep -E 'restart\.(idle_grace|deadline)' "$failed/testBuildFailure.log"
                touch "$out"
              '';

          vm = pkgs.testers.runNixOSTest (import ./nix/tests/vm.nix { inherit self; });

          # The stand-in image, built and streamed: its config says what
          # nix/image.nix promises (entrypoint, volume, baked config).
          image-stand-in =
            pkgs.runCommand "image-stand-in-check"
              {
                nativeBuildInputs = [
                  pkgs.jq
                  pkgs.gnutar
                ];
              }
              ''
                ${self.packages.${system}.image-stand-in} > image.tar
                tar -xf image.tar manifest.json
                config=$(jq -r '.[0].Config' manifest.json)
                tar -xf image.tar "$config"
                jq -e '.config.Entrypoint[1:] == ["run", "--config", "/etc/sd-webui-forge/config.toml"]
                  and (.config.Volumes | has("/var/lib/sd-webui-forge"))
                  and (.config.Env | index("PATH=/bin") != null)' "$config"
                touch "$out"
              '';
        }
      );

      formatter = forAllSystems (pkgs: pkgs.nixfmt);
    };
}
