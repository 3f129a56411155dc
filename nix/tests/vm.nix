# NixOS VM test of services.sd-webui-forge with the stand-in UI as the
# package (flake check `vm`). It proves what the module promises:
# - the unit is `active` only once the UI answers (the stand-in waits before
#   it listens, and meanwhile the unit is `activating`);
# - `systemctl status` shows the supervisor's Status: line;
# - a model change applied by a switch reloads the unit and reaches the UI
#   (link in place, refresh-checkpoints called) without restarting it;
# - an extraArgs change while a job runs: the switch returns at once, the job
#   completes, and only then does the UI restart, with the new argument;
# - the supervisor itself is never restarted by these switches, and owns its
#   D-Bus name (the policy from the package is installed).
{ self }:
{ pkgs, ... }:
let
  inherit (pkgs.stdenv.hostPlatform) system;
  record = "/var/lib/sd-webui-forge/stand-in-record.jsonl";
  modelB = {
    services.sd-webui-forge.models.checkpoints."b.safetensors" =
      pkgs.writeText "b.safetensors" "stand-in model b";
  };
in
{
  name = "sd-webui-forge";

  nodes.machine = {
    imports = [ self.nixosModules.default ];

    environment.systemPackages = [
      pkgs.curl
      pkgs.jq
      self.packages.${system}.sd-webui-supervisor
    ];

    services.sd-webui-forge = {
      enable = true;
      package = self.packages.${system}.stand-in-ui;
      environment = {
        # Long enough to see the unit `activating` before the UI listens.
        STANDIN_START_DELAY = "8";
        STANDIN_RECORD = record;
      };
      models.checkpoints."a.safetensors" = pkgs.writeText "a.safetensors" "stand-in model a";
      settings.CLIP_stop_at_last_layers = 1;
      restart = {
        policy = "when-idle";
        idleGrace = "1s";
        deadline = "10m";
        pollInterval = "500ms";
      };
    };

    specialisation = {
      models.configuration = modelB;
      args.configuration = {
        imports = [ modelB ];
        services.sd-webui-forge.extraArgs = [ "--cuda-malloc" ];
      };
    };
  };

  testScript =
    { nodes, ... }:
    let
      toplevel = nodes.machine.system.build.toplevel;
    in
    ''
      import json
      import shlex

      unit = "sd-webui-forge.service"
      curl = "${pkgs.curl}/bin/curl"
      ui_url = "http://127.0.0.1:7860"


      def main_pid():
          return machine.succeed(f"systemctl show -P MainPID {unit}").strip()


      def ui_pid():
          # [s]: the pattern must not match the shell running pgrep.
          pids = machine.succeed("pgrep -u sd-webui-forge -f '[s]tand_in_ui[.]py'").split()
          assert len(pids) == 1, f"expected one stand-in process, got {pids}"
          return pids[0]


      def status_text():
          return machine.succeed(f"systemctl show -P StatusText {unit}").strip()


      def switch(specialisation):
          out = machine.succeed(
              "${toplevel}/specialisation/"
              + specialisation
              + "/bin/switch-to-configuration test 2>&1"
          )
          machine.log(out)
          return out


      def units(out, verb):
          """Units switch-to-configuration says it is <verb> ("reloading", ...)."""
          for line in out.splitlines():
              if line.startswith(f"{verb} the following units:"):
                  return line.split(":", 1)[1].replace(",", " ").split()
          return []


      def assert_reloaded_only(out):
          assert unit in units(out, "reloading"), out
          for verb in ("stopping", "restarting", "starting"):
              assert unit not in units(out, verb), f"{unit} was {verb}: {out}"


      start_all()

      with subtest("the unit is active only once the UI answers"):
          machine.wait_for_unit(unit)
          machine.succeed(f"{curl} -sf {ui_url}/internal/ping")
          machine.succeed(f"systemctl stop {unit}")
          machine.succeed(f"systemctl start --no-block {unit}")
          machine.sleep(3)
          state = machine.succeed(f"systemctl show -P ActiveState {unit}").strip()
          assert state == "activating", f"unit is {state} while the UI is still starting"
          assert status_text().startswith("starting"), status_text()
          # The front door owns the port: a browser gets the restarting page.
          page = machine.succeed(
              f"{curl} -s -o /dev/null -w '%{{http_code}}' -H 'Accept: text/html' {ui_url}/"
          ).strip()
          assert page == "503", f"the restarting page answered {page}"
          machine.wait_for_unit(unit)
          # READY=1 came after the readiness probe answered: so does the ping.
          machine.succeed(f"{curl} -sf {ui_url}/internal/ping")

      with subtest("systemctl status shows the supervisor's Status: line"):
          machine.wait_until_succeeds(
              f"systemctl show -P StatusText {unit} | grep -q '^ready; idle'", timeout=30
          )
          out = machine.succeed(f"systemctl status {unit}")
          assert 'Status: "ready; idle' in out, out
          machine.succeed("sd-webui-supervisor status --config /etc/sd-webui-forge/config.toml")

      with subtest("the supervisor owns its D-Bus name"):
          out = machine.succeed(
              "busctl get-property io.github.sd_webui_supervisor.Supervisor1"
              " /io/github/sd_webui_supervisor/Supervisor1"
              " io.github.sd_webui_supervisor.Supervisor1 State"
          )
          assert '"ready"' in out, out

      with subtest("a model change applies without restarting the UI"):
          main, ui = main_pid(), ui_pid()
          assert_reloaded_only(switch("models"))
          link = "/var/lib/sd-webui-forge/models/Stable-diffusion/b.safetensors"
          machine.wait_until_succeeds(f"test -L {link}", timeout=30)
          machine.succeed(f"readlink {link} | grep -q -- '-b.safetensors$'")
          machine.wait_until_succeeds("grep -q refresh-checkpoints ${record}", timeout=30)
          assert ui_pid() == ui, "the UI was restarted for a model change"
          assert main_pid() == main, "the supervisor was restarted"

      with subtest("an args change while a job runs restarts the UI only after the job"):
          main, ui = main_pid(), ui_pid()
          body = json.dumps({"prompt": "vm test", "steps": 1, "stand_in_seconds": 20})
          machine.succeed(
              "systemd-run --unit=long-job --property=RemainAfterExit=yes"
              f" {curl} -sf -o /root/job.json -H 'Content-Type: application/json'"
              f" -d {shlex.quote(body)} {ui_url}/sdapi/v1/txt2img"
          )
          machine.wait_until_succeeds(
              f"{curl} -sf {ui_url}/sdapi/v1/progress"
              " | jq -e '.state.job_count > 0 or .state.job != \"\"'",
              timeout=30,
          )

          # The switch reloads and returns without waiting for the job.
          assert_reloaded_only(switch("args"))
          assert machine.succeed("systemctl show -P SubState long-job.service").strip() == "running"
          assert ui_pid() == ui, "the UI was restarted while a job was running"
          machine.wait_until_succeeds(
              f"systemctl show -P StatusText {unit} | grep -q 'restart pending'", timeout=30
          )

          # The job runs to its end...
          machine.wait_until_fails("systemctl show -P SubState long-job.service | grep -qx running", timeout=60)
          assert machine.succeed("systemctl show -P ExecMainStatus long-job.service").strip() == "0", (
              "the job was interrupted"
          )
          machine.succeed("jq -e '.images | length > 0' /root/job.json")

          # ...and only then the UI restarts, with the new argument.
          machine.wait_until_succeeds(
              f"test \"$(pgrep -u sd-webui-forge -f '[s]tand_in_ui[.]py')\" != {ui}", timeout=60
          )
          machine.wait_until_succeeds(
              f"systemctl show -P StatusText {unit} | grep -q '^ready; idle'", timeout=60
          )
          machine.succeed(f"tr '\\0' ' ' < /proc/{ui_pid()}/cmdline | grep -q -- --cuda-malloc")
          assert main_pid() == main, "the supervisor was restarted"
          machine.succeed(f"systemctl is-active {unit}")

          # The stand-in's own record: the old UI finished its job before it
          # was told to stop.
          events = [
              json.loads(line)
              for line in machine.succeed("cat ${record}").splitlines()
              if line.strip()
          ]
          old = [e["event"] for e in events if e.get("pid") == int(ui)]
          job_ends = [
              e for e in events
              if e.get("pid") == int(ui) and e["event"] == "job_end"
          ]
          assert job_ends and all(e.get("completed") for e in job_ends), job_ends
          assert "signal" in old, old
          assert old.index("job_end") < old.index("signal"), old
    '';
}
