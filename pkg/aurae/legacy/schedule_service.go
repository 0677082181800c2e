package legacy

import (
	"context"

	metaapi "github.com/aurae-runtime/aurae-cri/api/meta"
	runtimeapi "github.com/aurae-runtime/aurae-cri/api/runtime"
	scheduleapi "github.com/aurae-runtime/aurae-cri/api/schedule"
	"github.com/aurae-runtime/aurae-cri/pkg/errmap"
)

func metaOf(name string) *metaapi.AuraeMeta { return &metaapi.AuraeMeta{Name: name} }

// ScheduleService serves schedule.Schedule over the Scheduler.
type ScheduleService struct {
	scheduleapi.UnimplementedScheduleServer
	s *Scheduler
}

// ScheduleExecutableService serves schedule.ScheduleExecutable.
type ScheduleExecutableService struct {
	scheduleapi.UnimplementedScheduleExecutableServer
	s *Scheduler
}

// Services returns the two gRPC services of the scheduler.
func (s *Scheduler) Services() (*ScheduleService, *ScheduleExecutableService) {
	return &ScheduleService{s: s}, &ScheduleExecutableService{s: s}
}

// ShowEnabled lists the enabled executables.
func (x *ScheduleService) ShowEnabled(context.Context, *scheduleapi.ShowEnabledRequest) (*scheduleapi.ShowEnabledResponse, error) {
	return &scheduleapi.ShowEnabledResponse{Meta: metaOf("enabled"), Executables: x.s.show(true)}, nil
}

// ShowDisabled lists the disabled executables.
func (x *ScheduleService) ShowDisabled(context.Context, *scheduleapi.ShowDisabledRequest) (*scheduleapi.ShowDisabledResponse, error) {
	return &scheduleapi.ShowDisabledResponse{Meta: metaOf("disabled"), Executables: x.s.show(false)}, nil
}

// Enable keeps the executable and runs it.
func (x *ScheduleExecutableService) Enable(ctx context.Context, e *runtimeapi.Executable) (*scheduleapi.ExecutableEnableResponse, error) {
	if err := x.s.enable(ctx, e); err != nil {
		return nil, errmap.ToGRPC(err)
	}
	return &scheduleapi.ExecutableEnableResponse{Meta: metaOf(e.GetMeta().GetName())}, nil
}

// Disable stops the executable and keeps it.
func (x *ScheduleExecutableService) Disable(ctx context.Context, e *runtimeapi.Executable) (*scheduleapi.ExecutableDisableResponse, error) {
	if err := x.s.disable(ctx, e, false); err != nil {
		return nil, errmap.ToGRPC(err)
	}
	return &scheduleapi.ExecutableDisableResponse{Meta: metaOf(e.GetMeta().GetName())}, nil
}

// Destroy stops the executable and forgets it.
func (x *ScheduleExecutableService) Destroy(ctx context.Context, e *runtimeapi.Executable) (*scheduleapi.ExecutableDestroyResponse, error) {
	if err := x.s.disable(ctx, e, true); err != nil {
		return nil, errmap.ToGRPC(err)
	}
	return &scheduleapi.ExecutableDestroyResponse{Meta: metaOf(e.GetMeta().GetName())}, nil
}
